//! MC146818 CMOS RTC and NVRAM at ports 0x70 (index) / 0x71 (data).
//!
//! The clock reads the host's UTC time plus an offset the guest sets by
//! writing the time registers. No RTC interrupts are generated (there is no
//! IRQ 8 line), so register C always reads 0.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

/// Offset of the index port (0x70); bit 7 of a written index masks NMIs.
pub const INDEX_OFFSET: u64 = 0;
/// Offset of the data port (0x71).
pub const DATA_OFFSET: u64 = 1;
/// CMOS index of the century byte; the FADT's CENTURY field points here.
pub const CENTURY_INDEX: u8 = 0x32;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

const INDEX_MASK: u8 = 0x7f;
const RAM_SIZE: usize = 128;

/// Register A: update in progress.
const A_UIP: u8 = 0x80;
/// Register A: 32.768 kHz time base, 1024 Hz periodic rate (firmware default).
const A_DEFAULT: u8 = 0x26;
/// Register B: updates halted while the guest sets the clock.
const B_SET: u8 = 0x80;
/// Register B: binary (not BCD) data mode.
const B_BINARY: u8 = 0x04;
/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Register D: valid RAM and time (the battery is fine).
const D_VRT: u8 = 0x80;
/// Hours bit 7 in 12-hour mode marks PM.
const HOUR_PM: u8 = 0x80;

/// UIP reads as set during the last 244 µs of each second, as on the chip,
/// so guests that wait for an update edge see one and never see it stuck.
const UIP_WINDOW_NS: u32 = 244_000;

/// A broken-down UTC time as the RTC holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`). Out-of-range days simply spill into the next month.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        Self { year, month, day, hour: (sod / 3600) as u8, minute: (sod / 60 % 60) as u8, second: (sod % 60) as u8 }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Day of the week as the RTC counts it: 1 = Sunday.
    fn weekday(self) -> u8 {
        // 1970-01-01 was a Thursday.
        ((days_from_civil(self.year, self.month, self.day) + 4).rem_euclid(7) + 1) as u8
    }

    /// Whether the fields describe a time the RTC can hold.
    fn is_valid(self) -> bool {
        (0..=9999).contains(&self.year)
            && (1..=12).contains(&self.month)
            && (1..=31).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }
}

/// Host UTC now: whole seconds and the nanoseconds into the current second.
fn host_now() -> (i64, u32) {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2), d.subsec_nanos()),
        // A host clock before 1970: treat it as the epoch.
        Err(_) => (0, 0),
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

struct State {
    index: u8,
    /// NVRAM, and the backing store for registers A (low 7 bits), B and the
    /// alarms. Time registers and C/D are computed on read.
    ram: [u8; RAM_SIZE],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// While register B's SET bit is on: the clock the guest is editing.
    frozen: Option<DateTime>,
}

impl State {
    fn binary(&self) -> bool {
        self.ram[REG_B as usize] & B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn now(&self) -> DateTime {
        self.frozen.unwrap_or_else(|| DateTime::from_unix(host_now().0.saturating_add(self.offset)))
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[REG_B as usize] & B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.ram[REG_B as usize] & B_24H != 0 {
            return self.decode(v);
        }
        let h12 = self.decode(v & !HOUR_PM) % 12;
        if v & HOUR_PM != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    fn read(&self) -> u8 {
        let now = || self.now();
        match self.index {
            REG_SECONDS => self.encode(now().second),
            REG_MINUTES => self.encode(now().minute),
            REG_HOURS => self.encode_hour(now().hour),
            REG_WEEKDAY => self.encode(now().weekday()),
            REG_DAY => self.encode(now().day),
            REG_MONTH => self.encode(now().month),
            REG_YEAR => self.encode(now().year.rem_euclid(100) as u8),
            CENTURY_INDEX => self.encode(now().year.div_euclid(100).rem_euclid(100) as u8),
            REG_A => {
                let updating = self.frozen.is_none() && host_now().1 >= 1_000_000_000 - UIP_WINDOW_NS;
                (self.ram[REG_A as usize] & !A_UIP) | if updating { A_UIP } else { 0 }
            }
            // No interrupt flags: no alarm, periodic or update interrupts.
            REG_C => 0,
            REG_D => D_VRT,
            i => self.ram[usize::from(i)],
        }
    }

    /// Applies a write to one of the time fields.
    fn write_time(&mut self, index: u8, value: u8) {
        let mut t = self.now();
        let field = self.decode(value);
        match index {
            REG_SECONDS => t.second = field,
            REG_MINUTES => t.minute = field,
            REG_HOURS => t.hour = self.decode_hour(value),
            REG_DAY => t.day = field,
            REG_MONTH => t.month = field,
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(field),
            CENTURY_INDEX => t.year = i64::from(field) * 100 + t.year.rem_euclid(100),
            _ => return,
        }
        if self.frozen.is_some() {
            // Fields may be inconsistent until the guest clears SET.
            self.frozen = Some(t);
        } else {
            self.commit(t);
        }
    }

    /// Makes `t` the guest's current time, if it is a valid one.
    fn commit(&mut self, t: DateTime) {
        if t.is_valid() {
            self.offset = t.to_unix() - host_now().0;
        } else {
            log::debug!("cmos: ignoring invalid time {t:?}");
        }
    }

    fn write(&mut self, value: u8) {
        match self.index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY | REG_MONTH | REG_YEAR | CENTURY_INDEX => {
                self.write_time(self.index, value)
            }
            // The weekday is derived from the date.
            REG_WEEKDAY => {}
            REG_A => self.ram[REG_A as usize] = value & !A_UIP,
            REG_B => {
                let was_set = self.ram[REG_B as usize] & B_SET != 0;
                let set = value & B_SET != 0;
                if set && !was_set {
                    self.frozen = Some(self.now());
                } else if !set && was_set {
                    if let Some(t) = self.frozen.take() {
                        self.commit(t);
                    }
                }
                self.ram[REG_B as usize] = value;
            }
            REG_C | REG_D => {}
            i => self.ram[usize::from(i)] = value,
        }
    }
}

/// The CMOS RTC and its 128 bytes of NVRAM.
pub struct Cmos {
    state: Mutex<State>,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl Cmos {
    pub fn new() -> Self {
        let mut ram = [0u8; RAM_SIZE];
        ram[REG_A as usize] = A_DEFAULT;
        ram[REG_B as usize] = B_24H;
        Self { state: Mutex::new(State { index: 0, ram, offset: 0, frozen: None }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BusDevice for Cmos {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let state = self.lock();
        // A wide access touches consecutive ports, as an 8-bit ISA device would.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                Some(DATA_OFFSET) => state.read(),
                // The index port is write-only.
                _ => 0xff,
            };
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        for (i, &byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                // Bit 7 masks NMIs; we have no NMI sources to mask.
                Some(INDEX_OFFSET) => state.index = byte & INDEX_MASK,
                Some(DATA_OFFSET) => state.write(byte),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(c: &Cmos, index: u8) -> u8 {
        c.write(INDEX_OFFSET, &[index]);
        let mut b = [0u8];
        c.read(DATA_OFFSET, &mut b);
        b[0]
    }

    fn write_reg(c: &Cmos, index: u8, value: u8) {
        c.write(INDEX_OFFSET, &[index]);
        c.write(DATA_OFFSET, &[value]);
    }

    /// Reads the clock the way Linux's `mc146818_get_time` does (BCD, 24 h).
    fn read_time(c: &Cmos) -> DateTime {
        let year = i64::from(from_bcd(read_reg(c, CENTURY_INDEX))) * 100 + i64::from(from_bcd(read_reg(c, REG_YEAR)));
        DateTime {
            year,
            month: from_bcd(read_reg(c, REG_MONTH)),
            day: from_bcd(read_reg(c, REG_DAY)),
            hour: from_bcd(read_reg(c, REG_HOURS)),
            minute: from_bcd(read_reg(c, REG_MINUTES)),
            second: from_bcd(read_reg(c, REG_SECONDS)),
        }
    }

    #[test]
    fn civil_conversions_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let t = DateTime::from_unix(1_700_000_000);
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2023, 11, 14, 22, 13, 20));
        assert_eq!(t.weekday(), 3); // a Tuesday
    }

    #[test]
    fn reads_host_time_in_bcd() {
        let c = Cmos::new();
        // Fields read across a minute boundary can be off by a minute; retry.
        let close = (0..3).any(|_| {
            let before = host_now().0;
            let t = read_time(&c).to_unix();
            let after = host_now().0;
            before - 1 <= t && t <= after + 1
        });
        assert!(close);
        assert_eq!(read_reg(&c, REG_D), D_VRT);
        assert_eq!(read_reg(&c, REG_B), B_24H);
        assert_eq!(read_reg(&c, REG_A) & !A_UIP, A_DEFAULT);
    }

    #[test]
    fn uip_is_never_stuck() {
        let c = Cmos::new();
        let clear = (0..100_000).any(|_| read_reg(&c, REG_A) & A_UIP == 0);
        assert!(clear);
        write_reg(&c, REG_A, 0xff);
        assert_eq!(read_reg(&c, REG_A) & 0x7f, 0x7f);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let c = Cmos::new();
        write_reg(&c, REG_B, B_SET | B_BINARY);
        write_reg(&c, REG_HOURS, 0x80 | 11); // 11 PM
        write_reg(&c, REG_MINUTES, 59);
        write_reg(&c, REG_SECONDS, 0);
        write_reg(&c, REG_B, B_BINARY | B_24H);
        assert_eq!(read_reg(&c, REG_HOURS), 23);
        assert_eq!(read_reg(&c, REG_MINUTES), 59);
        write_reg(&c, REG_B, 0); // BCD, 12 h
        assert_eq!(read_reg(&c, REG_HOURS), 0x80 | 0x11);
    }

    #[test]
    fn guest_sets_the_clock() {
        let c = Cmos::new();
        write_reg(&c, REG_B, B_SET | B_24H);
        for (reg, v) in [
            (REG_SECONDS, 0x30),
            (REG_MINUTES, 0x45),
            (REG_HOURS, 0x12),
            (REG_DAY, 0x29),
            (REG_MONTH, 0x02),
            (REG_YEAR, 0x24),
            (CENTURY_INDEX, 0x20),
        ] {
            write_reg(&c, reg, v);
        }
        // Frozen while SET is on.
        assert_eq!(read_reg(&c, REG_SECONDS), 0x30);
        write_reg(&c, REG_B, B_24H);
        let t = read_time(&c);
        let want = DateTime { year: 2024, month: 2, day: 29, hour: 12, minute: 45, second: 30 };
        assert!((t.to_unix() - want.to_unix()).abs() <= 1, "{t:?}");
        assert_eq!(read_reg(&c, REG_WEEKDAY), 5); // a Thursday
    }

    #[test]
    fn nvram_and_nmi_bit() {
        let c = Cmos::new();
        write_reg(&c, 0x80 | 0x40, 0xa5);
        assert_eq!(read_reg(&c, 0x40), 0xa5);
        write_reg(&c, 0x7f, 0x5a);
        assert_eq!(read_reg(&c, 0x7f), 0x5a);
        write_reg(&c, REG_C, 0xff);
        assert_eq!(read_reg(&c, REG_C), 0);
        assert_eq!(read_reg(&c, REG_D), D_VRT);
    }

    #[test]
    fn garbage_writes_are_harmless() {
        let c = Cmos::new();
        for index in 0..=0xffu8 {
            for v in [0x00, 0x99, 0xff, 0x7f, 0x80] {
                write_reg(&c, index, v);
                read_reg(&c, index);
            }
        }
        // Invalid BCD while SET, then commit: ignored, clock still readable.
        write_reg(&c, REG_B, B_SET);
        write_reg(&c, REG_MONTH, 0xff);
        write_reg(&c, REG_B, B_24H);
        let t = read_time(&c);
        assert!(t.is_valid(), "{t:?}");
        c.write(0, &[REG_SECONDS, 0x00, 0x11]);
        c.read(0, &mut [0u8; 4]);
        c.write(u64::MAX, &[1, 2]);
        c.read(u64::MAX, &mut [0u8; 2]);
    }
}
