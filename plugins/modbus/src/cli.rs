//! `sensorgate modbus read` and `sensorgate modbus scan`: one-shot wiring checks on a
//! serial port or a TCP address, without a config file.
//!
//! `read` prints the raw registers (or bits) and, with `--type`, the decoded values, like
//! mbpoll. `scan` asks every unit id in a range for one register and lists those that
//! answer (an exception is an answer too: a device is there); on a terminal it shows a
//! progress bar on stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio_modbus::{Request, Response};

use crate::adapter::exception_text;
use crate::bus::{Bus, Timing};
use crate::config::{normalize_address, Parity, Serial, Transport};
use crate::plan::Table;
use crate::value::{self, ByteOrder, DataType, Format};

/// `sensorgate modbus …`
#[derive(Debug, clap::Args)]
pub struct ModbusArgs {
    #[command(subcommand)]
    pub command: ModbusCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ModbusCommand {
    /// Read registers or bits once and print them, raw and decoded.
    Read(ReadArgs),
    /// Find the unit ids that answer on a line.
    Scan(ScanArgs),
}

/// Where the device is: `--tcp HOST:PORT`, `--rtu-over-tcp HOST:PORT`, or `--port DEV`
/// with the line settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Modbus TCP device, host:port (port 502 when left out).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["port", "rtu_over_tcp"])]
    pub tcp: Option<String>,
    /// RTU frames through a TCP socket (serial-to-Ethernet converter), host:port.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "port")]
    pub rtu_over_tcp: Option<String>,
    /// Serial port for Modbus RTU, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "DEV")]
    pub port: Option<String>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// N, E or O.
    #[arg(long, default_value = "N")]
    pub parity: String,
    #[arg(long, default_value_t = 8)]
    pub data_bits: u8,
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// The longest wait for an answer, e.g. "500ms".
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub target: Target,
    /// Unit id (slave address).
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// holding, input, coil or discrete.
    #[arg(long, default_value = "holding")]
    pub table: String,
    /// First register (or bit), 0-based.
    #[arg(long)]
    pub address: u16,
    /// Registers (or bits) to read.
    #[arg(long, default_value_t = 1)]
    pub count: u16,
    /// Decode as: bool u16 i16 u32 i32 u64 i64 f32 f64 string.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: Option<String>,
    /// ABCD, CDAB, BADC or DCBA.
    #[arg(long, default_value = "ABCD")]
    pub byte_order: String,
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub target: Target,
    /// Unit ids to try: "1-247", "1,2,10-20".
    #[arg(long, default_value = "1-247")]
    pub units: String,
    /// The table of the register asked for.
    #[arg(long, default_value = "holding")]
    pub table: String,
    /// The register (or bit) asked for.
    #[arg(long, default_value_t = 0)]
    pub address: u16,
}

/// Why a wiring check could not run (a device that does not answer is a result, not
/// an error, except for `read`).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Device(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sensorgate_api::config::parse_duration(s)
}

impl Target {
    fn transport(&self) -> Result<Transport, CliError> {
        match (&self.tcp, &self.rtu_over_tcp, &self.port) {
            (Some(a), None, None) => Ok(Transport::Tcp {
                address: normalize_address(a).map_err(CliError::Usage)?,
            }),
            (None, Some(a), None) => Ok(Transport::RtuOverTcp {
                address: normalize_address(a).map_err(CliError::Usage)?,
            }),
            (None, None, Some(p)) => {
                let parity = match self.parity.trim().to_ascii_uppercase().as_str() {
                    "N" | "NONE" => Parity::None,
                    "E" | "EVEN" => Parity::Even,
                    "O" | "ODD" => Parity::Odd,
                    other => {
                        return Err(CliError::Usage(format!(
                            "--parity {other:?}: use N, E or O"
                        )))
                    }
                };
                if !(5..=8).contains(&self.data_bits) || !(1..=2).contains(&self.stop_bits) {
                    return Err(CliError::Usage(
                        "--data-bits is 5 to 8 and --stop-bits 1 or 2".into(),
                    ));
                }
                Ok(Transport::Rtu(Serial {
                    port: p.clone(),
                    baud: self.baud.max(1),
                    parity,
                    data_bits: self.data_bits,
                    stop_bits: self.stop_bits,
                }))
            }
            _ => Err(CliError::Usage(
                "say where the device is: --tcp HOST:PORT, --rtu-over-tcp HOST:PORT or --port DEV"
                    .into(),
            )),
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            timeout: self.timeout,
            ..Timing::default()
        }
    }
}

fn parse_table(s: &str) -> Result<Table, CliError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "holding" => Ok(Table::Holding),
        "input" => Ok(Table::Input),
        "coil" | "coils" => Ok(Table::Coil),
        "discrete" => Ok(Table::Discrete),
        other => Err(CliError::Usage(format!(
            "--table {other:?}: use holding, input, coil or discrete"
        ))),
    }
}

fn parse_type(s: &str) -> Result<DataType, CliError> {
    sensorgate_api::config::parse_value::<DataType>(toml::Value::String(s.trim().to_lowercase()))
        .map_err(|e| CliError::Usage(format!("--type: {}", e.message)))
}

fn request(table: Table, address: u16, count: u16) -> Request<'static> {
    match table {
        Table::Coil => Request::ReadCoils(address, count),
        Table::Discrete => Request::ReadDiscreteInputs(address, count),
        Table::Holding => Request::ReadHoldingRegisters(address, count),
        Table::Input => Request::ReadInputRegisters(address, count),
    }
}

/// Run `sensorgate modbus …`, printing to stdout (and the scan's progress to stderr).
pub async fn run(args: ModbusArgs) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match args.command {
        ModbusCommand::Read(a) => read(&a, &mut out).await,
        ModbusCommand::Scan(a) => scan(&a, &mut out, std::io::stderr().is_terminal()).await,
    }
}

/// `modbus read`: print the raw values, then the decoded ones with `--type`.
pub async fn read(args: &ReadArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let transport = args.target.transport()?;
    let table = parse_table(&args.table)?;
    let limit = if table.is_bits() { 2000 } else { 125 };
    if args.count == 0 || args.count > limit {
        return Err(CliError::Usage(format!(
            "--count {}: 1 to {limit} for the {table} table",
            args.count
        )));
    }
    let ty = args.ty.as_deref().map(parse_type).transpose()?;
    let order = ByteOrder::parse(&args.byte_order).ok_or_else(|| {
        CliError::Usage(format!(
            "--byte-order {:?}: use ABCD, CDAB, BADC or DCBA",
            args.byte_order
        ))
    })?;
    let bus = Bus::start(transport.clone());
    let answer = bus
        .call(
            args.unit,
            request(table, args.address, args.count),
            args.target.timing(),
        )
        .await;
    bus.close().await;
    let answer =
        answer.map_err(|e| CliError::Device(format!("{transport}, unit {}: {e}", args.unit)))?;
    let response = answer.map_err(|exc| {
        CliError::Device(format!(
            "{transport}, unit {} answered {}",
            args.unit,
            exception_text(exc)
        ))
    })?;
    let words = match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => {
            for (i, b) in bits.iter().take(usize::from(args.count)).enumerate() {
                writeln!(out, "{table} {}: {b}", u32::from(args.address) + i as u32)?;
            }
            return Ok(());
        }
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => w,
        other => return Err(CliError::Device(format!("unexpected answer {other:?}"))),
    };
    for (i, w) in words.iter().enumerate() {
        writeln!(
            out,
            "{table} {}: 0x{w:04X} {w:>5} {:>6}",
            u32::from(args.address) + i as u32,
            *w as i16
        )?;
    }
    if let Some(ty) = ty {
        let format = Format {
            ty,
            order,
            bit: None,
            length: if ty == DataType::String {
                args.count
            } else {
                1
            },
            scale: None,
            offset: None,
        };
        let n = usize::from(format.registers());
        for (k, chunk) in words.chunks(n).enumerate() {
            let at = u32::from(args.address) + (k * n) as u32;
            match value::decode(&format, chunk) {
                Ok(v) => writeln!(out, "{ty} {order} @{at}: {v}")?,
                Err(e) => writeln!(out, "{ty} {order} @{at}: {e}")?,
            }
        }
    }
    Ok(())
}

/// `1-247`, `1,2,10-20` into unit ids.
pub fn parse_units(s: &str) -> Result<Vec<u8>, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--units {s:?}: write e.g. \"1-247\" or \"1,2,10-20\""
        ))
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u8 = a.parse().map_err(|_| bad())?;
        let b: u8 = b.parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// `modbus scan`: which unit ids answer.
pub async fn scan(args: &ScanArgs, out: &mut dyn Write, progress: bool) -> Result<(), CliError> {
    let transport = args.target.transport()?;
    let table = parse_table(&args.table)?;
    let units = parse_units(&args.units)?;
    let bus = Bus::start(transport.clone());
    let mut found = Vec::new();
    let mut err = std::io::stderr();
    for (k, &unit) in units.iter().enumerate() {
        if progress {
            let done = (k * 30) / units.len();
            let _ = write!(
                err,
                "\r[{}{}] unit {unit:>3} ({}/{}), {} found",
                "#".repeat(done),
                " ".repeat(30 - done),
                k + 1,
                units.len(),
                found.len()
            );
            let _ = err.flush();
        }
        let answer = bus
            .call(unit, request(table, args.address, 1), args.target.timing())
            .await;
        let line = match answer {
            Ok(Ok(Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w))) => {
                let w = w.first().copied().unwrap_or(0);
                format!(
                    "unit {unit}: answers ({table} {} = 0x{w:04X} {w})",
                    args.address
                )
            }
            Ok(Ok(Response::ReadCoils(b) | Response::ReadDiscreteInputs(b))) => {
                let b = b.first().copied().unwrap_or(false);
                format!("unit {unit}: answers ({table} {} = {b})", args.address)
            }
            Ok(Ok(other)) => format!("unit {unit}: answers ({other:?})"),
            Ok(Err(exc)) => format!("unit {unit}: answers with {}", exception_text(exc)),
            Err(e) => {
                log::debug!("unit {unit}: {e}");
                continue;
            }
        };
        if progress {
            let _ = write!(err, "\r{:60}\r", "");
        }
        writeln!(out, "{line}")?;
        found.push(unit);
    }
    bus.close().await;
    if progress {
        let _ = writeln!(err, "\r{:60}\r", "");
    }
    let list: Vec<String> = found.iter().map(u8::to_string).collect();
    writeln!(
        out,
        "{} of {} unit id(s) answer on {transport}{}{}",
        found.len(),
        units.len(),
        if found.is_empty() { "" } else { ": " },
        list.join(", ")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges_parse() {
        assert_eq!(parse_units("1-3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_units("5, 1-2,2").unwrap(), vec![1, 2, 5]);
        assert_eq!(parse_units("1-247").unwrap().len(), 247);
        assert!(parse_units("3-1").is_err());
        assert!(parse_units("1-300").is_err());
        assert!(parse_units("").is_err());
    }
}
