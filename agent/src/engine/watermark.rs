//! Watermark generation: per-device event-time clocks and the pipeline-wide watermark.
//!
//! Each device has its own clock: `watermark = newest event time - bound` (bound 0 for
//! the monotonic strategy). A device silent for `idle_timeout` (agent clock) is idle:
//! its event time is assumed to advance with the wall clock, so its last windows
//! close. Windows keyed per device close on their device's watermark, so a device
//! whose clock runs ahead makes nobody else's data late. Keys that span devices
//! (`key_by = "metric"` / `"all"`) close on the global watermark: the minimum over
//! the devices that are not idle (an idle device holds nobody back), or the maximum
//! when all are idle. Watermarks never go back.
//!
//! Watermarks are recomputed in [`Watermarks::emit`], at most once per
//! `emit_interval`; between two emissions lateness is judged against the last one.
//! **Invariant**: no clock reads; the caller passes the wall clock in.

use fieldline_common::config::pipeline::WatermarkConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceClock {
    pub name: String,
    /// Newest event time seen, `i64::MIN` before the first reading.
    max_event_ms: i64,
    last_arrival_ms: i64,
    watermark_ms: i64,
    idle: bool,
    /// Keys that reference this device; an idle device with none is forgotten.
    pub(crate) refs: u32,
}

impl DeviceClock {
    fn new(name: String) -> Self {
        Self {
            name,
            max_event_ms: i64::MIN,
            last_arrival_ms: i64::MIN,
            watermark_ms: i64::MIN,
            idle: false,
            refs: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermarks {
    /// Slab of device clocks; ids are stable while a device is known.
    devices: Vec<Option<DeviceClock>>,
    free: Vec<u32>,
    global_ms: i64,
    /// The highest device watermark: no window of any key is due before it.
    #[serde(default = "min_ms")]
    max_device_ms: i64,
    last_emit_ms: Option<i64>,
}

fn min_ms() -> i64 {
    i64::MIN
}

impl Default for Watermarks {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            free: Vec::new(),
            global_ms: i64::MIN,
            max_device_ms: i64::MIN,
            last_emit_ms: None,
        }
    }
}

impl Watermarks {
    /// Adds a device clock, returning its id.
    pub fn insert(&mut self, name: String) -> u32 {
        let clock = Some(DeviceClock::new(name));
        match self.free.pop() {
            Some(id) => {
                self.devices[id as usize] = clock;
                id
            }
            None => {
                self.devices.push(clock);
                (self.devices.len() - 1) as u32
            }
        }
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut DeviceClock> {
        self.devices.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// The name of device `id`, if it is known.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.devices
            .get(id as usize)
            .and_then(Option::as_ref)
            .map(|d| d.name.as_str())
    }

    /// Known devices as (id, name), for rebuilding the name index after a restore.
    pub fn names(&self) -> impl Iterator<Item = (u32, &str)> {
        self.devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|d| (i as u32, d.name.as_str())))
    }

    /// Bytes held: the clock slab, device names and the free list.
    pub fn bytes(&self) -> usize {
        self.devices.capacity() * std::mem::size_of::<Option<DeviceClock>>()
            + self
                .devices
                .iter()
                .flatten()
                .map(|d| d.name.capacity())
                .sum::<usize>()
            + self.free.capacity() * 4
    }

    /// Devices with a clock.
    pub fn devices(&self) -> usize {
        self.devices.len() - self.free.len()
    }

    /// Records one reading of device `id`.
    pub fn observe(&mut self, id: u32, ts_ms: i64, arrival_ms: i64) {
        if let Some(d) = self.get_mut(id) {
            d.max_event_ms = d.max_event_ms.max(ts_ms);
            d.last_arrival_ms = d.last_arrival_ms.max(arrival_ms);
            d.idle = false;
        }
    }

    pub fn device_ms(&self, id: u32) -> i64 {
        self.devices
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or(i64::MIN, |d| d.watermark_ms)
    }

    pub fn global_ms(&self) -> i64 {
        self.global_ms
    }

    pub fn max_device_ms(&self) -> i64 {
        self.max_device_ms
    }

    /// Recomputes every watermark unless the last emission is younger than
    /// `emit_interval`; returns whether it did.
    pub fn emit(&mut self, cfg: &WatermarkConfig, wall_ms: i64) -> bool {
        if let Some(last) = self.last_emit_ms {
            if wall_ms.saturating_sub(last) < cfg.emit_interval_ms {
                return false;
            }
        }
        self.last_emit_ms = Some(wall_ms);
        let bound = cfg.bound_ms();
        let (mut active_min, mut idle_max) = (None::<i64>, None::<i64>);
        for d in self.devices.iter_mut().flatten() {
            if d.max_event_ms == i64::MIN {
                continue;
            }
            let idle_for = wall_ms.saturating_sub(d.last_arrival_ms);
            let mut wm = d.max_event_ms.saturating_sub(bound);
            d.idle = idle_for >= cfg.idle_timeout_ms;
            if d.idle {
                wm = wm.saturating_add(idle_for);
            }
            d.watermark_ms = d.watermark_ms.max(wm);
            self.max_device_ms = self.max_device_ms.max(d.watermark_ms);
            if d.idle {
                idle_max = Some(idle_max.map_or(d.watermark_ms, |m| m.max(d.watermark_ms)));
            } else {
                active_min = Some(active_min.map_or(d.watermark_ms, |m| m.min(d.watermark_ms)));
            }
        }
        if let Some(wm) = active_min.or(idle_max) {
            self.global_ms = self.global_ms.max(wm);
        }
        true
    }

    /// Forgets idle devices that no key references any more (bounded memory; the
    /// caller does this only under pressure: a forgotten device's clock restarts).
    pub fn prune(&mut self, mut forget: impl FnMut(u32, &str)) {
        for (i, slot) in self.devices.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|d| d.idle && d.refs == 0) {
                if let Some(d) = slot.take() {
                    forget(i as u32, &d.name);
                }
                self.free.push(i as u32);
            }
        }
    }

    /// Moves every watermark to +∞ (end of input): everything closes.
    pub fn finish(&mut self) {
        for d in self.devices.iter_mut().flatten() {
            d.watermark_ms = i64::MAX;
        }
        self.global_ms = i64::MAX;
        self.max_device_ms = i64::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldline_common::config::pipeline::WatermarkStrategy;

    fn cfg(bound: i64, idle: i64, every: i64) -> WatermarkConfig {
        WatermarkConfig {
            strategy: WatermarkStrategy::BoundedOutOfOrderness {
                max_out_of_orderness_ms: bound,
            },
            idle_timeout_ms: idle,
            emit_interval_ms: every,
        }
    }

    #[test]
    fn device_ahead_does_not_move_the_others() {
        let c = cfg(100, 10_000, 0);
        let mut w = Watermarks::default();
        let (a, b) = (w.insert("a".into()), w.insert("b".into()));
        w.observe(a, 1_000, 0);
        w.observe(b, 900_000, 0);
        w.emit(&c, 0);
        assert_eq!(w.device_ms(a), 900);
        assert_eq!(w.device_ms(b), 899_900);
        assert_eq!(w.global_ms(), 900, "global is the slowest active device");
    }

    #[test]
    fn idle_device_holds_nobody_back() {
        let c = cfg(0, 1_000, 0);
        let mut w = Watermarks::default();
        let (a, b) = (w.insert("a".into()), w.insert("b".into()));
        w.observe(a, 10, 0);
        w.observe(b, 5_000, 0);
        w.emit(&c, 0);
        assert_eq!(w.global_ms(), 10);
        w.observe(b, 6_000, 1_500);
        w.emit(&c, 1_500);
        assert_eq!(w.global_ms(), 6_000, "a is idle since 1s");
        assert_eq!(
            w.device_ms(a),
            1_510,
            "an idle device advances with the wall clock"
        );
    }

    #[test]
    fn periodic_emission_and_monotonic_watermark() {
        let c = cfg(0, 100_000, 1_000);
        let mut w = Watermarks::default();
        let a = w.insert("a".into());
        w.observe(a, 50, 0);
        assert!(w.emit(&c, 0));
        w.observe(a, 500, 10);
        assert!(!w.emit(&c, 999), "too soon");
        assert_eq!(w.device_ms(a), 50);
        assert!(w.emit(&c, 1_000));
        assert_eq!(w.device_ms(a), 500);
        w.observe(a, 100, 1_001);
        w.emit(&c, 2_000);
        assert_eq!(w.device_ms(a), 500, "never goes back");
    }
}
