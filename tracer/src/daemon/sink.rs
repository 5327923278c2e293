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
        file: File,
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
            file,
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
                    rotate(path, *keep)?;
                    *file = OpenOptions::new().create(true).append(true).open(&*path)?;
                    *written = 0;
                }
                writeln!(file, "{line}")?;
                *written += line.len() as u64 + 1;
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout => std::io::stdout().flush(),
            Self::File { file, .. } => file.sync_data(),
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
}
