//! Byte encoding of detector state for engine checkpoints (std only, like the rest of
//! `detect/`). Little-endian fixed-width fields in the order each detector writes them;
//! no self-description: a state is only loaded into a detector built from the same spec
//! (the agent fingerprints the detector config and starts fresh when it changed).

/// Appends fields to a state buffer.
pub struct StateWriter<'a>(pub &'a mut Vec<u8>);

impl StateWriter<'_> {
    pub fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    /// Only the non-zero entries, as (index, value) pairs after their count: learned
    /// histograms are mostly empty bins, and a checkpoint is rewritten every interval.
    pub fn sparse_f64s(&mut self, v: &[f64]) {
        let nonzero = v.iter().filter(|x| x.to_bits() != 0).count();
        self.u64(v.len() as u64);
        self.u64(nonzero as u64);
        for (i, x) in v.iter().enumerate().filter(|(_, x)| x.to_bits() != 0) {
            self.u64(i as u64);
            self.f64(*x);
        }
    }
    /// Length-prefixed floats.
    pub fn f64s(&mut self, v: &[f64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.f64(*x);
        }
    }
}

/// Reads fields back; every getter returns `None` once the input is short or malformed.
pub struct StateReader<'a>(pub &'a [u8]);

impl StateReader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    pub fn f64(&mut self) -> Option<f64> {
        self.take::<8>().map(f64::from_le_bytes)
    }
    pub fn f32(&mut self) -> Option<f32> {
        self.take::<4>().map(f32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    pub fn i64(&mut self) -> Option<i64> {
        self.take::<8>().map(i64::from_le_bytes)
    }
    pub fn usize(&mut self) -> Option<usize> {
        self.u64().and_then(|v| usize::try_from(v).ok())
    }
    pub fn bool(&mut self) -> Option<bool> {
        match self.take::<1>()? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
    /// Fills `into` from a length-prefixed list of exactly `into.len()` floats.
    pub fn f64s_into(&mut self, into: &mut [f64]) -> Option<()> {
        if self.usize()? != into.len() {
            return None;
        }
        for x in into.iter_mut() {
            *x = self.f64()?;
        }
        Some(())
    }
    /// Fills `into` from what [`StateWriter::sparse_f64s`] wrote for a slice of the same
    /// length; indices must increase, so one state has one encoding.
    pub fn sparse_f64s_into(&mut self, into: &mut [f64]) -> Option<()> {
        if self.usize()? != into.len() {
            return None;
        }
        let nonzero = self.usize()?;
        if nonzero > into.len() {
            return None;
        }
        into.fill(0.0);
        let mut next = 0;
        for _ in 0..nonzero {
            let i = self.usize()?;
            if i < next || i >= into.len() {
                return None;
            }
            into[i] = self.f64()?;
            next = i + 1;
        }
        Some(())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
