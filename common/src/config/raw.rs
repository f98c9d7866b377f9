//! Serde shapes of the config sections, before validation. Durations stay strings
//! here so a bad one is reported with its path next to every other problem.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub id: String,
    pub data_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub listen: String,
    pub topic_template: String,
    pub max_payload_bytes: usize,
    pub max_connections: usize,
    pub broker_buffer_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub size: String,
    pub max_out_of_orderness: String,
    pub idle_timeout: String,
    pub max_future: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub fleet_url: String,
    pub batch_max_records: usize,
    pub flush_interval: String,
    pub heartbeat_interval: String,
    pub request_timeout: String,
    pub backoff_min: String,
    pub backoff_max: String,
    pub credential_file: String,
    pub ca_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub cache_capacity_bytes: u64,
    pub flush_every: String,
    pub durability: String,
    pub checkpoint_interval: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    pub max_bytes: u64,
    pub max_age: String,
    pub on_full: String,
    pub forward_raw_readings: bool,
}
