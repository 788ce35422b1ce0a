//! The read planner: the points due in a poll cycle, merged into the fewest read
//! requests the device accepts.
//!
//! Per table, points are sorted by address and taken greedily: a point joins the current
//! request when the registers between them (the gap) are at most `max_gap` and the
//! request stays within `max_registers_per_read` (`max_bits_per_read` on the coil and
//! discrete tables); otherwise it starts a new request. Overlapping points (a `u16` and a
//! `bit` of the same register) share their registers. A point marked `solo` (it made a
//! merged read fail with an exception once) is always read on its own.

use std::fmt;

use serde::Deserialize;

/// `table = "…"`: which of the four Modbus tables a point is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Coils, read with function 1, written with 5.
    Coil,
    /// Discrete inputs, function 2; read-only.
    Discrete,
    /// Holding registers, function 3, written with 6 or 16.
    Holding,
    /// Input registers, function 4; read-only.
    Input,
}

impl Table {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }

    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The read function code.
    pub fn read_function(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::Discrete => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// Whether points in this table can be written at all.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One point as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// The point's index in the device.
    pub point: usize,
    pub table: Table,
    /// The first register (or bit).
    pub address: u16,
    /// Registers (or bits) it takes; at least 1.
    pub count: u16,
    /// Never merged with another point.
    pub solo: bool,
}

/// A device's limits for merged reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registers (or bits) a merged read may skip between two points.
    pub max_gap: u16,
    /// The most registers in one read of the holding or input table.
    pub max_registers: u16,
    /// The most bits in one read of the coil or discrete table.
    pub max_bits: u16,
}

impl Limits {
    fn max_for(&self, table: Table) -> u32 {
        let m = if table.is_bits() {
            self.max_bits
        } else {
            self.max_registers
        };
        u32::from(m.max(1))
    }
}

/// One read request of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    /// The points it reads, as indexes into the device's points, by address.
    pub points: Vec<usize>,
}

impl ReadRequest {
    /// The registers (or bits) read that no point uses.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.table.is_bits() {
            "bit"
        } else {
            "register"
        };
        let s = if self.count == 1 { "" } else { "s" };
        write!(
            f,
            "fc{:02} {} {}..{} ({} {what}{s})",
            self.table.read_function(),
            self.table,
            self.address,
            self.end() - 1,
            self.count
        )
    }
}

/// Merge `items` into the fewest read requests within `limits`, ordered by table and
/// address. An item larger than the limit still gets a request of its own (the config
/// check refuses such points, so this does not happen in a running device).
pub fn plan(items: &[Item], limits: &Limits) -> Vec<ReadRequest> {
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by_key(|i| (i.table, i.address, std::cmp::Reverse(i.count), i.point));
    let mut out: Vec<ReadRequest> = Vec::new();
    // The request being built, per table: (start, end exclusive, points).
    let mut current: Option<(Table, u32, u32, Vec<usize>)> = None;
    for item in sorted {
        let start = u32::from(item.address);
        let end = start + u32::from(item.count.max(1));
        if item.solo {
            out.push(request(item.table, start, end, vec![item.point]));
            continue;
        }
        let max = limits.max_for(item.table);
        match &mut current {
            Some((table, cur_start, cur_end, points))
                if *table == item.table
                    && start <= *cur_end + u32::from(limits.max_gap)
                    && end.max(*cur_end) - *cur_start <= max =>
            {
                *cur_end = end.max(*cur_end);
                points.push(item.point);
            }
            _ => {
                if let Some((table, s, e, points)) = current.take() {
                    out.push(request(table, s, e, points));
                }
                current = Some((item.table, start, end, vec![item.point]));
            }
        }
    }
    if let Some((table, s, e, points)) = current {
        out.push(request(table, s, e, points));
    }
    out.sort_by_key(|r| (r.table, r.address));
    out
}

fn request(table: Table, start: u32, end: u32, points: Vec<usize>) -> ReadRequest {
    // Addresses are u16 and counts at most 65535 by construction (the config refuses a
    // point that runs past register 65535).
    ReadRequest {
        table,
        address: u16::try_from(start).unwrap_or(u16::MAX),
        count: u16::try_from(end - start).unwrap_or(u16::MAX),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_gap: 10,
        max_registers: 125,
        max_bits: 2000,
    };

    fn item(point: usize, table: Table, address: u16, count: u16) -> Item {
        Item {
            point,
            table,
            address,
            count,
            solo: false,
        }
    }

    fn req(table: Table, address: u16, count: u16, points: &[usize]) -> ReadRequest {
        ReadRequest {
            table,
            address,
            count,
            points: points.to_vec(),
        }
    }

    #[test]
    fn contiguous_and_near_points_share_a_read() {
        use Table::*;
        let items = [
            item(0, Holding, 100, 2),
            item(1, Holding, 102, 2),
            item(2, Holding, 114, 1), // gap of 10 after 104: joins
            item(3, Holding, 126, 1), // gap of 11 after 115: new read
            item(4, Input, 0, 1),
            item(5, Coil, 3, 1),
            item(6, Coil, 0, 1),
        ];
        assert_eq!(
            plan(&items, &L),
            vec![
                req(Coil, 0, 4, &[6, 5]),
                req(Holding, 100, 15, &[0, 1, 2]),
                req(Holding, 126, 1, &[3]),
                req(Input, 0, 1, &[4]),
            ]
        );
    }

    #[test]
    fn never_over_the_limit() {
        // 200 u16 points at 0..200: 125 + 75 registers.
        let items: Vec<Item> = (0..200)
            .map(|i| item(i, Table::Holding, i as u16, 1))
            .collect();
        let p = plan(&items, &L);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].address, p[0].count), (0, 125));
        assert_eq!((p[1].address, p[1].count), (125, 75));
        let small = Limits {
            max_registers: 8,
            ..L
        };
        let p = plan(&items, &small);
        assert_eq!(p.len(), 25);
        assert!(p.iter().all(|r| r.count <= 8));
        // A 2-register point that would cross the limit starts the next read.
        let items = [
            item(0, Table::Holding, 0, 2),
            item(1, Table::Holding, 2, 2),
            item(2, Table::Holding, 4, 2),
        ];
        let small = Limits {
            max_registers: 5,
            ..L
        };
        assert_eq!(
            plan(&items, &small),
            vec![
                req(Table::Holding, 0, 4, &[0, 1]),
                req(Table::Holding, 4, 2, &[2])
            ]
        );
    }

    #[test]
    fn bits_use_their_own_limit() {
        let items: Vec<Item> = (0..2500)
            .map(|i| item(i, Table::Discrete, i as u16, 1))
            .collect();
        let p = plan(&items, &L);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].count, p[1].count), (2000, 500));
    }

    #[test]
    fn overlapping_points_share_registers() {
        let items = [
            item(0, Table::Holding, 10, 1),
            item(1, Table::Holding, 10, 1), // a bit of the same register
            item(2, Table::Holding, 8, 4),
        ];
        assert_eq!(
            plan(&items, &L),
            vec![req(Table::Holding, 8, 4, &[2, 0, 1])]
        );
    }

    #[test]
    fn zero_gap_reads_only_contiguous_points_together() {
        let l = Limits { max_gap: 0, ..L };
        let items = [
            item(0, Table::Input, 0, 2),
            item(1, Table::Input, 2, 1),
            item(2, Table::Input, 4, 1),
        ];
        assert_eq!(
            plan(&items, &l),
            vec![
                req(Table::Input, 0, 3, &[0, 1]),
                req(Table::Input, 4, 1, &[2])
            ]
        );
    }

    #[test]
    fn solo_points_are_read_alone() {
        let mut items = vec![
            item(0, Table::Holding, 0, 1),
            item(1, Table::Holding, 1, 1),
            item(2, Table::Holding, 2, 1),
        ];
        items[1].solo = true;
        assert_eq!(
            plan(&items, &L),
            vec![
                req(Table::Holding, 0, 3, &[0, 2]),
                req(Table::Holding, 1, 1, &[1]),
            ]
        );
    }

    #[test]
    fn the_last_register_is_reachable() {
        let items = [item(0, Table::Holding, 65534, 2)];
        assert_eq!(plan(&items, &L), vec![req(Table::Holding, 65534, 2, &[0])]);
        assert_eq!(
            plan(&items, &L)[0].to_string(),
            "fc03 holding 65534..65535 (2 registers)"
        );
    }

    #[test]
    fn a_200_point_map_over_3_blocks() {
        // The figure of issue 3: 200 points in 3 blocks (f32 pairs, u16 runs, bits).
        let mut items = Vec::new();
        for i in 0..80 {
            items.push(item(items.len(), Table::Holding, 1000 + 2 * i, 2)); // 160 regs
        }
        for i in 0..70 {
            items.push(item(items.len(), Table::Input, 3000 + i, 1)); // 70 regs
        }
        for i in 0..50 {
            items.push(item(items.len(), Table::Coil, 10 + i, 1));
        }
        let p = plan(&items, &L);
        // holding: 160 registers need 2 reads; input 70: 1; coils 50 bits: 1.
        assert_eq!(p.len(), 4, "{p:#?}");
        assert_eq!(items.len(), 200);
    }
}
