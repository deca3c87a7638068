//! TensorBoard event files (`train --tensorboard`): each epoch's scalars, the same as its
//! `metrics.jsonl` line, in `<run>/tb/`, so `tensorboard --logdir runs/` shows them beside the
//! official code's `--tb` runs.
//!
//! An event file is a sequence of TFRecords, each holding one serialized `tensorflow.Event`
//! protocol buffer: a record is the data's length as a little-endian `u64`, the masked CRC-32C of
//! those 8 bytes, the data, and the masked CRC-32C of the data. The first event of a file holds
//! only `file_version = "brain.Event:2"`; each later one a step and a `Summary` of scalar values.
//! The messages below declare the fields of `event.proto` and `summary.proto` that scalars use,
//! with their official field numbers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use serde_json::Value;

use crate::error::{Error, Result};

/// `tensorflow.Event`, with the fields scalars need.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "EventKind", tags = "3, 5")]
    kind: Option<EventKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum EventKind {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` holding a `simple_value`. The field is part of a `oneof` in
/// `summary.proto`, so it is always written, zero included: hence `optional`.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// An open event file of a run.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), named as TensorBoard expects
    /// (`events.out.tfevents.<seconds>.revsnn`; a resumed run adds a file, and TensorBoard reads
    /// them together), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        let failed = |path: &Path, e: std::io::Error| file_error(path, &e);
        std::fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
        let wall_time = now();
        let mut name = format!("events.out.tfevents.{}.revsnn", wall_time as u64);
        let mut copy = 1;
        while dir.join(&name).exists() {
            name = format!("events.out.tfevents.{}.revsnn.{copy}", wall_time as u64);
            copy += 1;
        }
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| failed(&path, e))?;
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time,
            step: 0,
            kind: Some(EventKind::FileVersion("brain.Event:2".into())),
        })?;
        Ok(writer)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes every number of a `metrics.jsonl` line as a scalar tagged with its key, at the
    /// line's `epoch` as the step, and syncs the file to disk, as the run's other files are.
    pub fn add_metrics(&mut self, line: &Value) -> Result<()> {
        let step = line["epoch"].as_i64().unwrap_or(0);
        let fields = line.as_object().into_iter().flatten();
        let value = fields
            .filter(|(key, _)| key.as_str() != "epoch")
            .filter_map(|(key, v)| {
                Some(SummaryValue {
                    tag: key.clone(),
                    simple_value: Some(v.as_f64()? as f32),
                })
            })
            .collect();
        self.write(&Event {
            wall_time: now(),
            step,
            kind: Some(EventKind::Summary(Summary { value })),
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let record = tf_record(&event.encode_to_vec());
        let written = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        written.map_err(|e| file_error(&self.path, &e))
    }
}

/// `data` framed as one TFRecord.
fn tf_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend(length);
    record.extend(masked_crc32c(&length).to_le_bytes());
    record.extend(data);
    record.extend(masked_crc32c(data).to_le_bytes());
    record
}

/// TFRecord's checksum: the CRC-32C rotated right by 15 bits plus a constant.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn file_error(path: &Path, e: &std::io::Error) -> Error {
    Error::file(
        path,
        format!(
            "cannot write the TensorBoard events: {e} (check that the run folder is writable \
             and the disk has space)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The records of an event file, each checked against its two checksums.
    fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (length, tail) = rest.split_at(8);
            let n = u64::from_le_bytes(length.try_into().unwrap()) as usize;
            assert_eq!(tail[..4], masked_crc32c(length).to_le_bytes());
            let data = &tail[4..4 + n];
            assert_eq!(tail[4 + n..8 + n], masked_crc32c(data).to_le_bytes());
            records.push(data.to_vec());
            rest = &tail[8 + n..];
        }
        records
    }

    #[test]
    fn the_checksum_is_tensorflows_masked_crc32c() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc32c(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn a_file_holds_the_version_then_one_event_per_epoch_with_every_number() {
        let dir = std::env::temp_dir().join(format!("revsnn-tb-{}", std::process::id()));
        let mut writer = EventWriter::create(&dir).unwrap();
        for epoch in 1..=2 {
            let line = json!({"epoch": epoch, "train_loss": 2.0 / f64::from(epoch),
                              "test_acc1": 0.0, "lr": 0.1, "note": "not a number"});
            writer.add_metrics(&line).unwrap();
        }
        let path = writer.path().to_path_buf();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("tfevents")
        );
        let records = read_records(&std::fs::read(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(records.len(), 3);
        let first = Event::decode(&records[0][..]).unwrap();
        assert_eq!(
            first.kind,
            Some(EventKind::FileVersion("brain.Event:2".into()))
        );
        let second = Event::decode(&records[2][..]).unwrap();
        assert_eq!(second.step, 2);
        let Some(EventKind::Summary(summary)) = second.kind else {
            panic!("a summary event")
        };
        let scalars: Vec<(&str, Option<f32>)> = summary
            .value
            .iter()
            .map(|v| (v.tag.as_str(), v.simple_value))
            .collect();
        assert_eq!(
            scalars,
            [
                ("lr", Some(0.1)),
                ("test_acc1", Some(0.0)),
                ("train_loss", Some(1.0))
            ]
        );
    }
}
