//! The rendezvous's messages on a TCP stream: a magic word that names the protocol and its
//! version, then one length-prefixed frame.
//!
//! A rank other than 0 sends a [`Hello`]; rank 0 answers each with an [`Answer`]. Integers are
//! big-endian. A stream that does not start with [`MAGIC`] is not a revsnn rank (a port scanner,
//! another program on the port) and is refused without reading further.

use std::io::{self, Read, Write};

/// The first bytes in either direction: "revsnn", a rendezvous marker and the protocol version.
const MAGIC: [u8; 8] = *b"revsnnR\x01";

/// The largest frame read: settings of a few KB, an id of 128 bytes, or an error message.
const MAX_FRAME_BYTES: u32 = 16 << 20;

/// What a rank other than 0 tells rank 0 about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    /// The rank the process was started as.
    pub rank: usize,
    /// The world size it was started with.
    pub world_size: usize,
    /// The run's settings as text.
    pub settings: String,
}

/// Rank 0's answer to every other rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// The ranks agree: the NCCL unique id made by rank 0.
    Id(Vec<u8>),
    /// The ranks disagree (or rank 0 failed): the error every rank reports.
    Refused(String),
}

const ANSWER_ID: u8 = 0;
const ANSWER_REFUSED: u8 = 1;

/// Sends `hello`.
pub(super) fn write_hello(stream: &mut impl Write, hello: &Hello) -> io::Result<()> {
    let mut payload = Vec::with_capacity(16 + hello.settings.len());
    payload.extend_from_slice(&(hello.rank as u64).to_be_bytes());
    payload.extend_from_slice(&(hello.world_size as u64).to_be_bytes());
    payload.extend_from_slice(hello.settings.as_bytes());
    write_message(stream, &payload)
}

/// Receives a [`Hello`]; an error of kind `InvalidData` for a stream that is not a revsnn rank.
pub(super) fn read_hello(stream: &mut impl Read) -> io::Result<Hello> {
    let payload = read_message(stream)?;
    let (numbers, settings) = payload
        .split_at_checked(16)
        .ok_or_else(|| invalid("a hello shorter than its two numbers"))?;
    let number = |bytes: &[u8]| {
        let word = u64::from_be_bytes(bytes.try_into().unwrap_or_default());
        usize::try_from(word).map_err(|_| invalid("a rank or world size beyond this machine's"))
    };
    Ok(Hello {
        rank: number(&numbers[..8])?,
        world_size: number(&numbers[8..])?,
        settings: String::from_utf8(settings.to_vec())
            .map_err(|_| invalid("settings that are not UTF-8"))?,
    })
}

/// Sends `answer`.
pub(super) fn write_answer(stream: &mut impl Write, answer: &Answer) -> io::Result<()> {
    let (tag, body) = match answer {
        Answer::Id(id) => (ANSWER_ID, id.as_slice()),
        Answer::Refused(text) => (ANSWER_REFUSED, text.as_bytes()),
    };
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(tag);
    payload.extend_from_slice(body);
    write_message(stream, &payload)
}

/// Receives an [`Answer`]; an error of kind `InvalidData` for a stream that is not rank 0.
pub(super) fn read_answer(stream: &mut impl Read) -> io::Result<Answer> {
    let payload = read_message(stream)?;
    match payload.split_first() {
        Some((&ANSWER_ID, id)) => Ok(Answer::Id(id.to_vec())),
        Some((&ANSWER_REFUSED, text)) => {
            Ok(Answer::Refused(String::from_utf8_lossy(text).into_owned()))
        }
        _ => Err(invalid("an answer of unknown kind")),
    }
}

/// Writes the magic word and `payload` as one frame, in one write.
fn write_message(stream: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&length| length <= MAX_FRAME_BYTES)
        .ok_or_else(|| invalid("a message larger than the rendezvous carries (16 MiB)"))?;
    let mut message = Vec::with_capacity(MAGIC.len() + 4 + payload.len());
    message.extend_from_slice(&MAGIC);
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(payload);
    stream.write_all(&message)?;
    stream.flush()
}

/// Reads the magic word and one frame, returning its payload.
fn read_message(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut magic = [0; MAGIC.len()];
    stream.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(invalid("a stream that does not start with the magic word"));
    }
    let mut length = [0; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > MAX_FRAME_BYTES {
        return Err(invalid("a frame larger than the rendezvous carries"));
    }
    let mut payload = vec![0; length as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a revsnn rendezvous message: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_and_both_answers_survive_the_wire() {
        let hello = Hello {
            rank: 3,
            world_size: 8,
            settings: "lr = 0.1\nbatch = 64\n".into(),
        };
        let mut bytes = Vec::new();
        write_hello(&mut bytes, &hello).unwrap();
        assert_eq!(read_hello(&mut bytes.as_slice()).unwrap(), hello);
        for answer in [Answer::Id((0..128).collect()), Answer::Refused("no".into())] {
            let mut bytes = Vec::new();
            write_answer(&mut bytes, &answer).unwrap();
            assert_eq!(read_answer(&mut bytes.as_slice()).unwrap(), answer);
        }
    }

    #[test]
    fn a_stream_without_the_magic_word_is_refused() {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let error = read_hello(&mut request.as_slice()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let error = read_answer(&mut request.as_slice()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_oversized_or_cut_frame_is_refused() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let error = read_hello(&mut bytes.as_slice()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let mut bytes = Vec::new();
        write_answer(&mut bytes, &Answer::Id(vec![1; 128])).unwrap();
        bytes.truncate(bytes.len() - 1);
        let error = read_answer(&mut bytes.as_slice()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
