//! Offline replay: recorded messages through the configured pipelines, records out
//! as JSON lines. No broker, fleet or disk state; deterministic.
//!
//! Input: one JSON object per line, `{"topic": "...", "payload": "<raw text>",
//! "received_at": <ms>}` or `"payload_b64"` for binary payloads (CBOR, SenML CBOR).
//! Messages are replayed in `received_at` order (stable for equal times); the agent
//! clock is `received_at`, so watermarks, idle timeouts and the future-timestamp cap
//! behave as they did live. At the end of input every open window is closed.
//! Output: one JSON object per record, `{"kind": "window" | "late" | "anomaly" |
//! "dead_letter", ...fields}`; a dead letter's payload is `payload` (text) or
//! `payload_b64`.
//!
//! A malformed input line is reported with its line number and skipped; the good
//! lines around it are still replayed.

use std::io::{BufRead, Write};
use std::sync::Arc;

use base64::Engine as _;
use fieldline_common::config::AgentConfig;
use fieldline_common::wire::RecordBody;
use serde::Deserialize;

use crate::broker::Message;
use crate::counters::Counters;
use crate::pipeline::Pipeline;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    topic: String,
    payload: Option<String>,
    payload_b64: Option<String>,
    received_at: i64,
}

/// A malformed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub messages: usize,
    pub records: usize,
    pub bad_lines: Vec<BadLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read input: {0}")]
    Read(std::io::Error),
    #[error("cannot write output: {0}")]
    Write(std::io::Error),
}

fn parse(text: &str) -> Result<Message, String> {
    let l: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let payload = match (l.payload, l.payload_b64) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| format!("payload_b64: {e}"))?,
        _ => return Err("exactly one of `payload` and `payload_b64` is required".into()),
    };
    Ok(Message {
        topic: l.topic,
        payload,
        arrival_ms: l.received_at,
    })
}

/// Replays `input` through `cfg`'s pipelines, writing records to `output`.
pub fn replay(
    cfg: &AgentConfig,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<Summary, ReplayError> {
    let mut summary = Summary::default();
    let mut messages = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(ReplayError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        match parse(&line) {
            Ok(m) => messages.push(m),
            Err(reason) => summary.bad_lines.push(BadLine {
                line: i + 1,
                reason,
            }),
        }
    }
    messages.sort_by_key(|m| m.arrival_ms);
    let mut pipeline = Pipeline::from_config(cfg, Arc::new(Counters::default()));
    let mut out = Vec::new();
    let mut write = |out: &mut Vec<RecordBody>, summary: &mut Summary| {
        for body in out.drain(..) {
            summary.records += 1;
            let line = serde_json::to_string(&to_json(body)).unwrap_or_default();
            writeln!(output, "{line}").map_err(ReplayError::Write)?;
        }
        Ok(())
    };
    for msg in &messages {
        // As the live loop's timer would have, before this message arrived.
        pipeline.advance(msg.arrival_ms, &mut out);
        pipeline.handle(msg, &mut out);
        pipeline.advance(msg.arrival_ms, &mut out);
        write(&mut out, &mut summary)?;
        summary.messages += 1;
    }
    pipeline.flush(&mut out);
    write(&mut out, &mut summary)?;
    Ok(summary)
}

/// `{"kind": ..., fields}`, dead-letter payloads as text or base64.
pub fn to_json(body: RecordBody) -> serde_json::Value {
    let kind = body.kind();
    let dead_payload = match &body {
        RecordBody::DeadLetter(d) => Some(d.payload.clone()),
        _ => None,
    };
    let mut v = serde_json::to_value(&body).unwrap_or_default();
    let mut fields = v
        .as_object_mut()
        .and_then(|o| o.remove(kind))
        .and_then(|f| match f {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    if let Some(p) = dead_payload {
        fields.remove("payload");
        match String::from_utf8(p) {
            Ok(text) => fields.insert("payload".into(), text.into()),
            Err(e) => fields.insert(
                "payload_b64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(e.as_bytes())
                    .into(),
            ),
        };
    }
    let mut obj = serde_json::Map::new();
    obj.insert("kind".into(), kind.into());
    obj.extend(fields);
    serde_json::Value::Object(obj)
}
