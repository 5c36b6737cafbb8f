//! Media files in a job (the contract's `images/image_000000.png` and
//! `audio/audio_000000.wav`): their names, size limits, the formats the
//! daemon decodes (recognised by their first bytes, not their extension),
//! and listing a claimed job's files without following links.

use std::path::Path;

use crate::fsio::{read_limited, ReadError};

use crate::config::Settings;
/// Most media files one job may hold.
pub const MAX_FILES: usize = 64;

/// Images or audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Audio,
}

impl MediaKind {
    /// The job subdirectory (`images`, `audio`).
    pub fn dir(self) -> &'static str {
        match self {
            MediaKind::Image => "images",
            MediaKind::Audio => "audio",
        }
    }

    /// The file name stem (`image`, `audio`).
    pub fn stem(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
        }
    }

    /// The size limit that `s` sets for this kind.
    pub fn max_bytes(self, s: &Settings) -> u64 {
        match self {
            MediaKind::Image => s.max_image_bytes,
            MediaKind::Audio => s.max_audio_bytes,
        }
    }

    /// The environment variable behind the limit.
    pub fn limit_var(self) -> &'static str {
        match self {
            MediaKind::Image => "NRVNA_MAX_IMAGE_SIZE",
            MediaKind::Audio => "NRVNA_MAX_AUDIO_SIZE",
        }
    }

    /// The formats the daemon decodes, for messages.
    pub fn formats(self) -> &'static str {
        match self {
            MediaKind::Image => "png, jpg, gif, webp or bmp",
            MediaKind::Audio => "wav, mp3 or flac",
        }
    }

    /// The format of `head` (a file's first bytes), if it is one the
    /// daemon decodes.
    pub fn sniff(self, head: &[u8]) -> Option<&'static str> {
        match self {
            MediaKind::Image => sniff_image(head),
            MediaKind::Audio => sniff_audio(head),
        }
    }
}

/// The name of the `idx`-th file in a job: `image_000000.png`; `ext` is
/// the source file's extension as given (the C++ `wrk` keeps it).
pub fn file_name(kind: MediaKind, idx: usize, ext: &str) -> String {
    if ext.is_empty() {
        format!("{}_{idx:06}", kind.stem())
    } else {
        format!("{}_{idx:06}.{ext}", kind.stem())
    }
}

/// Image formats by magic bytes: what stb_image (llama.cpp's decoder) reads.
pub fn sniff_image(h: &[u8]) -> Option<&'static str> {
    if h.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if h.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a") {
        Some("gif")
    } else if h.len() >= 12 && &h[..4] == b"RIFF" && &h[8..12] == b"WEBP" {
        Some("webp")
    } else if h.starts_with(b"BM") && h.len() >= 26 {
        Some("bmp")
    } else {
        None
    }
}

/// Audio formats by magic bytes: what miniaudio (llama.cpp's decoder) reads.
pub fn sniff_audio(h: &[u8]) -> Option<&'static str> {
    if h.len() >= 12 && &h[..4] == b"RIFF" && &h[8..12] == b"WAVE" {
        Some("wav")
    } else if h.starts_with(b"fLaC") {
        Some("flac")
    } else if h.starts_with(b"ID3") || (h.len() >= 2 && h[0] == 0xff && h[1] & 0xe0 == 0xe0) {
        Some("mp3")
    } else {
        None
    }
}

/// Why a job's media cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{dir}/ is a symlink or not a directory; media must be regular files inside the job")]
    BadDir { dir: &'static str },
    #[error("{name} {source}")]
    Unreadable {
        name: String,
        #[source]
        source: ReadError,
    },
    #[error("{name} is larger than {var} ({limit} bytes)")]
    TooLarge {
        name: String,
        var: &'static str,
        limit: u64,
    },
    #[error("{name} is empty")]
    Empty { name: String },
    #[error("{name} is not {formats} (its first bytes are no known format)")]
    UnknownFormat { name: String, formats: &'static str },
    #[error("the job holds more than {MAX_FILES} files in {dir}/")]
    TooMany { dir: &'static str },
    #[error("listing {dir}/: {source}")]
    List {
        dir: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a job's media of `kind`, in name order: `(images/NAME, bytes)`.
/// No `images/` directory is an empty list. Links are never followed, and
/// each file is checked for size and format before it reaches a decoder.
pub fn read_job_media(job: &Path, kind: MediaKind, limits: &Settings) -> Result<Vec<(String, Vec<u8>)>, MediaError> {
    let dir = job.join(kind.dir());
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MediaError::BadDir { dir: kind.dir() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(MediaError::List {
                dir: kind.dir(),
                source,
            })
        }
    }
    let mut names = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|source| MediaError::List {
        dir: kind.dir(),
        source,
    })?;
    for e in entries {
        let e = e.map_err(|source| MediaError::List {
            dir: kind.dir(),
            source,
        })?;
        let n = e.file_name().to_string_lossy().into_owned();
        // A submitter's half-written copy is not a file of the job.
        if n.starts_with('.') || n.ends_with(".tmp") {
            continue;
        }
        names.push(n);
        if names.len() > MAX_FILES {
            return Err(MediaError::TooMany { dir: kind.dir() });
        }
    }
    names.sort();
    let limit = kind.max_bytes(limits);
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let name = format!("{}/{n}", kind.dir());
        let bytes = read_limited(&dir.join(&n), limit).map_err(|source| match source {
            ReadError::TooLarge { limit } => MediaError::TooLarge {
                name: name.clone(),
                var: kind.limit_var(),
                limit,
            },
            source => MediaError::Unreadable {
                name: name.clone(),
                source,
            },
        })?;
        if bytes.is_empty() {
            return Err(MediaError::Empty { name });
        }
        if kind.sniff(&bytes).is_none() {
            return Err(MediaError::UnknownFormat {
                name,
                formats: kind.formats(),
            });
        }
        out.push((name, bytes));
    }
    Ok(out)
}

/// A media file a submitter copies into a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaFile {
    pub kind: MediaKind,
    /// The extension the copy gets (the source's, or the detected format's).
    pub ext: String,
    pub bytes: Vec<u8>,
}

/// Reads a file given on a submitter's command line and checks it: a
/// readable regular file (a link to one is followed), not empty, within
/// the size limit, in a format the daemon decodes.
pub fn load_for_submit(path: &Path, kind: MediaKind, limits: &Settings) -> Result<MediaFile, String> {
    use std::io::Read;
    let shown = path.display();
    let what = kind.stem();
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} file {shown} is not a regular file"));
    }
    let limit = kind.max_bytes(limits);
    if meta.len() > limit {
        return Err(format!(
            "{what} file {shown} is {} bytes, over the limit of {limit} bytes (raise {} to allow it)",
            meta.len(),
            kind.limit_var()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("reading {what} file {shown}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{what} file {shown} grew over the limit of {limit} bytes while being read"
        ));
    }
    if bytes.is_empty() {
        return Err(format!("{what} file {shown} is empty"));
    }
    let Some(format) = kind.sniff(&bytes) else {
        return Err(format!(
            "{what} file {shown} is not {} (its first bytes are no known format); convert it first",
            kind.formats()
        ));
    };
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| format.to_owned());
    Ok(MediaFile { kind, ext, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(file_name(MediaKind::Image, 0, "png"), "image_000000.png");
        assert_eq!(file_name(MediaKind::Audio, 12, "wav"), "audio_000012.wav");
        assert_eq!(file_name(MediaKind::Image, 3, ""), "image_000003");
    }

    #[test]
    fn formats_are_known_by_their_first_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nxxxx"), Some("png"));
        assert_eq!(sniff_image(&[0xff, 0xd8, 0xff, 0xe0]), Some("jpg"));
        assert_eq!(sniff_image(b"GIF89a...."), Some("gif"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(sniff_image(b"hello"), None);
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WAVEfmt "), Some("wav"));
        assert_eq!(sniff_audio(b"fLaC...."), Some("flac"));
        assert_eq!(sniff_audio(b"ID3\x04...."), Some("mp3"));
        assert_eq!(sniff_audio(b"\x89PNG"), None);
    }

    #[test]
    fn a_job_s_media_are_read_in_order_and_bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_job_media(d.path(), MediaKind::Image, &Settings::default())
            .unwrap()
            .is_empty());
        let img = d.path().join("images");
        std::fs::create_dir(&img).unwrap();
        std::fs::write(img.join("image_000001.png"), b"\x89PNG\r\n\x1a\nB").unwrap();
        std::fs::write(img.join("image_000000.png"), b"\x89PNG\r\n\x1a\nA").unwrap();
        let got = read_job_media(d.path(), MediaKind::Image, &Settings::default()).unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["images/image_000000.png", "images/image_000001.png"]);

        std::fs::write(img.join("image_000002.png"), b"").unwrap();
        let e = read_job_media(d.path(), MediaKind::Image, &Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("image_000002.png is empty"), "{e}");
        std::fs::write(img.join("image_000002.png"), b"not an image").unwrap();
        let e = read_job_media(d.path(), MediaKind::Image, &Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not png, jpg"), "{e}");
        std::fs::remove_file(img.join("image_000002.png")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", img.join("image_000002.png")).unwrap();
        let e = read_job_media(d.path(), MediaKind::Image, &Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");

        // images/ itself a link to a directory elsewhere.
        let other = tempfile::tempdir().unwrap();
        std::fs::remove_dir_all(&img).unwrap();
        std::os::unix::fs::symlink(other.path(), &img).unwrap();
        let e = read_job_media(d.path(), MediaKind::Image, &Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("images/ is a symlink or not a directory"), "{e}");
    }
}
