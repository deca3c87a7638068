//! The entries of a ZIP archive as `torch.save` writes it (docs/pytorch-files.md §1): each entry
//! stored, not compressed, found through the central directory (ZIP64 records included) and
//! checked against its CRC-32. Only what a reader of such a file needs: a compressed or
//! encrypted entry is listed but not read, and an archive split over disks is an error.

use std::collections::HashMap;

use super::{invalid, little_endian};
use crate::error::Result;

/// The signatures of the records read (PKWARE's APPNOTE.TXT, §4.3).
const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_OF_DIRECTORY: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
/// The extra field holding an entry's 64-bit sizes and offset.
const ZIP64_EXTRA: u16 = 0x0001;
/// The end-of-directory record without its comment, which may be up to `u16::MAX` bytes.
const END_OF_DIRECTORY_LEN: usize = 22;

/// True when `bytes` start as a ZIP archive does (a local file header).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(&LOCAL_HEADER.to_le_bytes())
}

/// One entry of an archive: its bytes, or why they are not read.
#[derive(Clone, Copy, Debug)]
pub enum Entry<'a> {
    /// Stored as it is, checked against its CRC-32.
    Stored(&'a [u8]),
    /// Compressed or encrypted (the word says which): not read.
    Unread(&'static str),
}

/// The entries of the archive `bytes`, by name. Two entries of one name, or stored entries whose
/// bytes overlap, are an error, so that each byte's CRC-32 is computed once.
pub fn entries(bytes: &[u8]) -> Result<HashMap<String, Entry<'_>>> {
    let directory = Directory::find(bytes)?;
    let mut at = directory.offset;
    let mut entries = HashMap::with_capacity(directory.count.min(1 << 16));
    // each stored entry's bytes: where they start and end in the file, and their CRC-32
    let mut stored = Vec::new();
    for _ in 0..directory.count {
        let (name, entry) = central_entry(bytes, &mut at)?;
        let entry = match entry.unread {
            Some(why) => Entry::Unread(why),
            None => {
                let data = entry.data(bytes, &name)?;
                let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
                stored.push((start, start + data.len(), entry.crc32, name.clone()));
                Entry::Stored(data)
            }
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(invalid(format!("two entries are named {name}")));
        }
    }
    stored.sort_unstable();
    if stored.windows(2).any(|pair| pair[1].0 < pair[0].1) {
        return Err(invalid("two entries share bytes (a malformed archive)"));
    }
    let corrupt = stored
        .iter()
        .find(|(start, end, crc, _)| crc32fast::hash(&bytes[*start..*end]) != *crc);
    match corrupt {
        Some((.., name)) => Err(invalid(format!(
            "entry {name}: its CRC-32 does not match its data (a corrupt file)"
        ))),
        None => Ok(entries),
    }
}

/// Where the central directory starts and how many entries it lists.
struct Directory {
    offset: usize,
    count: usize,
}

impl Directory {
    /// From the end-of-directory record (searched from the end, past a comment), or its ZIP64
    /// twin where a count or offset did not fit the 32-bit one.
    fn find(bytes: &[u8]) -> Result<Directory> {
        let end = (0..=bytes.len().saturating_sub(END_OF_DIRECTORY_LEN))
            .rev()
            .take(usize::from(u16::MAX) + 1)
            .find(|&at| {
                let comment = read_le(bytes, at + 20, 2).map(|n| n as usize);
                u32_at(bytes, at) == Some(END_OF_DIRECTORY)
                    && comment.is_ok_and(|n| at + END_OF_DIRECTORY_LEN + n == bytes.len())
            })
            .ok_or_else(|| invalid("no ZIP end-of-directory record (a truncated file?)"))?;
        let field = |offset, width| read_le(bytes, end + offset, width);
        if field(4, 2)? != 0 || field(6, 2)? != 0 {
            return Err(invalid("a ZIP archive split over several disks"));
        }
        let (count, offset) = (field(10, 2)?, field(16, 4)?);
        if count != u64::from(u16::MAX) && offset != u64::from(u32::MAX) {
            return Directory::at(count, offset);
        }
        let locator = end
            .checked_sub(20)
            .filter(|&at| u32_at(bytes, at) == Some(ZIP64_LOCATOR))
            .ok_or_else(|| invalid("a ZIP64 archive without its end-of-directory locator"))?;
        let record = to_usize(read_le(bytes, locator + 8, 8)?)?;
        if u32_at(bytes, record) != Some(ZIP64_END_OF_DIRECTORY) {
            return Err(invalid(
                "the ZIP64 end-of-directory record is not where its locator says",
            ));
        }
        Directory::at(
            read_le(bytes, record + 32, 8)?,
            read_le(bytes, record + 48, 8)?,
        )
    }

    /// The directory of `count` entries at `offset`, both as this machine's sizes.
    fn at(count: u64, offset: u64) -> Result<Directory> {
        Ok(Directory {
            offset: to_usize(offset)?,
            count: to_usize(count)?,
        })
    }
}

/// What the central directory says of one entry.
struct CentralEntry {
    crc32: u32,
    /// The bytes in the archive.
    size: u64,
    local_header: u64,
    /// "compressed" or "encrypted" where the entry is not stored as it is.
    unread: Option<&'static str>,
}

impl CentralEntry {
    /// The entry's bytes: after its local header, whose name and extra field may differ in
    /// length from the central directory's.
    fn data<'a>(&self, bytes: &'a [u8], name: &str) -> Result<&'a [u8]> {
        let header = to_usize(self.local_header)?;
        if u32_at(bytes, header) != Some(LOCAL_HEADER) {
            return Err(invalid(format!(
                "entry {name}: no local header where the directory says"
            )));
        }
        let skipped = read_le(bytes, header + 26, 2)? + read_le(bytes, header + 28, 2)?;
        let start = to_usize(skipped)?
            .checked_add(header + 30)
            .ok_or_else(|| invalid("an entry offset overflows"))?;
        start
            .checked_add(to_usize(self.size)?)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                invalid(format!(
                    "entry {name}: its {} bytes run past the end of the file (truncated?)",
                    self.size
                ))
            })
    }
}

/// The central-directory entry at `*at`, which moves past it: its name and where its data is.
fn central_entry(bytes: &[u8], at: &mut usize) -> Result<(String, CentralEntry)> {
    let start = *at;
    if u32_at(bytes, start) != Some(CENTRAL_HEADER) {
        return Err(invalid(
            "the ZIP central directory is cut short (a truncated file?)",
        ));
    }
    let field = |offset, width| read_le(bytes, start + offset, width);
    let (flags, method) = (field(8, 2)?, field(10, 2)?);
    let lengths = [field(28, 2)?, field(30, 2)?, field(32, 2)?].map(|n| n as usize);
    let name_at = start + 46;
    let name = bytes
        .get(name_at..name_at + lengths[0])
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .ok_or_else(|| invalid("a ZIP entry's name runs past the end of the file"))?;
    let unread = match (flags & 1, method) {
        (0, 0) => None,
        (0, _) => Some("compressed"),
        _ => Some("encrypted"),
    };
    let extra_at = name_at + lengths[0];
    let extra = bytes
        .get(extra_at..extra_at + lengths[1])
        .ok_or_else(|| invalid(format!("entry {name}: its extra field runs past the file")))?;
    // The ZIP64 field holds the sizes and the offset in this order (APPNOTE §4.5.3).
    let mut wide = Zip64Fields::new(extra);
    let uncompressed = wide.or_narrow(field(24, 4)?, &name, "uncompressed size")?;
    let size = wide.or_narrow(field(20, 4)?, &name, "size")?;
    if unread.is_none() && size != uncompressed {
        return Err(invalid(format!(
            "entry {name}: stored, but its two sizes differ"
        )));
    }
    let entry = CentralEntry {
        crc32: field(16, 4)? as u32,
        size,
        local_header: wide.or_narrow(field(42, 4)?, &name, "header offset")?,
        unread,
    };
    *at = extra_at + lengths[1] + lengths[2];
    Ok((name, entry))
}

/// The 64-bit values of an entry's ZIP64 extra field, taken in order for each 32-bit field
/// that holds `u32::MAX` (APPNOTE §4.5.3).
struct Zip64Fields<'a> {
    values: &'a [u8],
}

impl<'a> Zip64Fields<'a> {
    /// The ZIP64 field among an entry's `extra` fields (none: no values).
    fn new(mut extra: &'a [u8]) -> Self {
        while extra.len() >= 4 {
            let id = u16::from_le_bytes([extra[0], extra[1]]);
            let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
            let body = extra.get(4..4 + len).unwrap_or(&extra[4..]);
            if id == ZIP64_EXTRA {
                return Zip64Fields { values: body };
            }
            extra = &extra[(4 + len).min(extra.len())..];
        }
        Zip64Fields { values: &[] }
    }

    /// `narrow`, or the next 64-bit value where `narrow` is `u32::MAX` (`what` names it for the
    /// error when the field lacks it).
    fn or_narrow(&mut self, narrow: u64, name: &str, what: &str) -> Result<u64> {
        if narrow != u64::from(u32::MAX) {
            return Ok(narrow);
        }
        let (value, rest) = self
            .values
            .split_first_chunk::<8>()
            .ok_or_else(|| invalid(format!("entry {name}: its ZIP64 {what} is missing")))?;
        self.values = rest;
        Ok(u64::from_le_bytes(*value))
    }
}

/// The `width`-byte little-endian unsigned integer at `at`.
fn read_le(bytes: &[u8], at: usize, width: usize) -> Result<u64> {
    let field = at
        .checked_add(width)
        .and_then(|end| bytes.get(at..end))
        .ok_or_else(|| invalid("a ZIP record runs past the end of the file (truncated?)"))?;
    Ok(little_endian(field))
}

/// The 4-byte little-endian word at `at`, if the file is that long.
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    read_le(bytes, at, 4).ok().map(|v| v as u32)
}

/// A size or offset of the archive as this machine's `usize`.
fn to_usize(value: u64) -> Result<usize> {
    usize::try_from(value).map_err(|_| invalid(format!("a ZIP offset or size of {value} bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry of a test archive: its name, its bytes and its compression method.
    type TestEntry<'a> = (&'a str, &'a [u8], u16);

    /// An archive of `entries` (method 0: stored), their sizes and offsets in ZIP64 records
    /// when `zip64`, with an archive comment.
    fn archive(entries: &[TestEntry], zip64: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        let offsets: Vec<usize> = entries
            .iter()
            .map(|&(name, data, method)| {
                let offset = bytes.len();
                bytes.extend(LOCAL_HEADER.to_le_bytes());
                bytes.extend(
                    [20, 0, 0, 0]
                        .iter()
                        .chain(&method.to_le_bytes())
                        .chain(&[0; 4]),
                );
                bytes.extend(crc32fast::hash(data).to_le_bytes());
                bytes.extend([data.len() as u32; 2].map(u32::to_le_bytes).concat());
                bytes.extend((name.len() as u16).to_le_bytes());
                bytes.extend(0u16.to_le_bytes());
                bytes.extend(name.as_bytes());
                bytes.extend(data);
                offset
            })
            .collect();
        let directory = bytes.len();
        for (&(name, data, method), offset) in entries.iter().zip(offsets) {
            central_header(&mut bytes, name, data, method, offset, zip64);
        }
        let directory_size = bytes.len() - directory;
        let narrow = |value: usize| if zip64 { u32::MAX } else { value as u32 };
        if zip64 {
            let record = bytes.len();
            let count = entries.len() as u64;
            bytes.extend(ZIP64_END_OF_DIRECTORY.to_le_bytes());
            bytes.extend(44u64.to_le_bytes());
            bytes.extend([0; 12]);
            let sizes = [count, count, directory_size as u64, directory as u64];
            bytes.extend(sizes.map(u64::to_le_bytes).concat());
            bytes.extend(ZIP64_LOCATOR.to_le_bytes());
            bytes.extend(0u32.to_le_bytes());
            bytes.extend((record as u64).to_le_bytes());
            bytes.extend(1u32.to_le_bytes());
        }
        bytes.extend(END_OF_DIRECTORY.to_le_bytes());
        bytes.extend([0; 4]);
        let count = if zip64 {
            u16::MAX
        } else {
            entries.len() as u16
        };
        bytes.extend([count; 2].map(u16::to_le_bytes).concat());
        bytes.extend((directory_size as u32).to_le_bytes());
        bytes.extend(narrow(directory).to_le_bytes());
        bytes.extend(7u16.to_le_bytes());
        bytes.extend(b"comment");
        bytes
    }

    /// The central-directory header of one entry whose local header is at `offset`.
    fn central_header(
        bytes: &mut Vec<u8>,
        name: &str,
        data: &[u8],
        method: u16,
        offset: usize,
        zip64: bool,
    ) {
        let narrow = |value: usize| if zip64 { u32::MAX } else { value as u32 };
        bytes.extend(CENTRAL_HEADER.to_le_bytes());
        bytes.extend(
            [20, 0, 20, 0, 0, 0]
                .iter()
                .chain(&method.to_le_bytes())
                .chain(&[0; 4]),
        );
        bytes.extend(crc32fast::hash(data).to_le_bytes());
        bytes.extend([narrow(data.len()); 2].map(u32::to_le_bytes).concat());
        bytes.extend((name.len() as u16).to_le_bytes());
        bytes.extend((if zip64 { 28u16 } else { 0 }).to_le_bytes());
        bytes.extend([0; 10]);
        bytes.extend(narrow(offset).to_le_bytes());
        bytes.extend(name.as_bytes());
        if zip64 {
            // the uncompressed size, the size and the offset, in this order; the sizes equal
            // for a stored entry, so a test of the order tells them apart by the offset
            bytes.extend(ZIP64_EXTRA.to_le_bytes());
            bytes.extend(24u16.to_le_bytes());
            let values = [data.len() as u64, data.len() as u64, offset as u64];
            bytes.extend(values.map(u64::to_le_bytes).concat());
        }
    }

    #[test]
    fn entries_are_found_through_the_plain_and_the_zip64_directory() {
        for zip64 in [false, true] {
            let bytes = archive(
                &[
                    ("archive/data.pkl", b"pickle", 0),
                    ("archive/data/0", b"0123456789", 0),
                ],
                zip64,
            );
            assert!(is_zip(&bytes));
            let entries = entries(&bytes).unwrap();
            assert_eq!(entries.len(), 2);
            assert!(matches!(
                entries["archive/data.pkl"],
                Entry::Stored(b"pickle")
            ));
            assert!(
                matches!(entries["archive/data/0"], Entry::Stored(b"0123456789")),
                "zip64 {zip64}"
            );
        }
    }

    #[test]
    fn a_compressed_entry_is_listed_unread_and_a_corrupt_one_is_an_error() {
        let compressed = archive(&[("archive/code/x.py", b"xyz", 8)], false);
        let entries = entries(&compressed).unwrap();
        assert!(matches!(
            entries["archive/code/x.py"],
            Entry::Unread("compressed")
        ));

        let mut corrupt = archive(&[("archive/data/0", b"0123456789", 0)], true);
        corrupt[30 + 14 + 3] ^= 1; // within the data, after the 30-byte header and the name
        let message = entries_error(&corrupt);
        assert!(message.contains("CRC-32"), "{message}");
        let bytes = archive(&[("archive/data/0", b"0123456789", 0)], false);
        let message = entries_error(&bytes[..bytes.len() - 30]);
        assert!(message.contains("end-of-directory"), "{message}");
        // a comment one byte shorter than its length says: no end-of-directory record
        let message = entries_error(&bytes[..bytes.len() - 1]);
        assert!(message.contains("end-of-directory"), "{message}");
        let twice = archive(&[("a", b"1", 0), ("a", b"2", 0)], false);
        assert!(entries_error(&twice).contains("two entries are named a"));
    }

    fn entries_error(bytes: &[u8]) -> String {
        entries(bytes).map(|_| ()).unwrap_err().to_string()
    }
}
