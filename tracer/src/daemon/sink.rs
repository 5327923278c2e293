//! Drop events as JSON lines: to stdout, or to a file rotated by size (`path` → `path.1` →
//! ... → `path.N`, the oldest deleted).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

pub enum Sink {
    Stdout,
    File {
        path: PathBuf,
        /// `None` after a failed write: opened again (the directory may be back, the disk
        /// may have room) at the next line.
        file: Option<File>,
        written: u64,
        max_bytes: u64,
        keep: u32,
    },
}

impl Sink {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if path == Path::new("-") {
            return Ok(Self::Stdout);
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self::File {
            path: path.to_owned(),
            file: Some(file),
            written,
            max_bytes: max_bytes.max(1024),
            keep,
        })
    }

    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()
            }
            Self::File {
                path,
                file,
                written,
                max_bytes,
                keep,
            } => {
                if *written > 0 && *written + line.len() as u64 + 1 > *max_bytes {
                    *file = None;
                    rotate(path, *keep)?;
                    *written = 0;
                }
                let f = match file {
                    Some(f) => f,
                    None => {
                        let f = OpenOptions::new().create(true).append(true).open(&*path)?;
                        *written = f.metadata()?.len();
                        file.insert(f)
                    }
                };
                // One write per line: a short disk takes the whole line or none of it.
                let mut buf = Vec::with_capacity(line.len() + 1);
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                if let Err(e) = f.write_all(&buf) {
                    *file = None;
                    return Err(e);
                }
                *written += buf.len() as u64;
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout => std::io::stdout().flush(),
            Self::File { file, .. } => file.as_mut().map_or(Ok(()), |f| f.sync_data()),
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(path, keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(path, n), numbered(path, n + 1));
    }
    std::fs::rename(path, numbered(path, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = std::env::temp_dir().join(format!("pathtrace-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("drops.json");
        let mut sink = Sink::open(&path, 1024, 2).unwrap();
        let line = format!("{{\"kind\":\"verdict\",\"pad\":\"{}\"}}", "x".repeat(300));
        for _ in 0..12 {
            sink.write_line(&line).unwrap();
        }
        sink.flush().unwrap();
        assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files");
        for p in [path.clone(), numbered(&path, 1)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 1024, "{} is {len} bytes", p.display());
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The directory goes away under the log: the write fails (the caller counts it), and
    /// once the directory is back the next line opens the file again.
    #[test]
    fn a_failed_write_is_retried_at_the_next_line() {
        let dir = std::env::temp_dir().join(format!("pathtrace-sink-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("drops.json");
        let mut sink = Sink::open(&path, 1 << 20, 2).unwrap();
        sink.write_line("{\"n\":1}").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // The open file still takes the line (its inode lives on); force the reopen a
        // rotation would do, into the directory that is gone.
        if let Sink::File { file, .. } = &mut sink {
            *file = None;
        }
        assert!(sink.write_line("{\"n\":2}").is_err());
        std::fs::create_dir_all(&dir).unwrap();
        sink.write_line("{\"n\":3}").expect("written again");
        sink.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":3}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
