//! `sensorgate modbus read` / `scan` against a real Modbus TCP device on port 0.

use std::time::Duration;

use clap::Parser;
use sensorgate_modbus::cli::{self, ModbusArgs, ModbusCommand};

mod common;
use common::{State, TcpDevice, Unit};

/// The subcommand as the daemon's CLI nests it.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    modbus: ModbusArgs,
}

fn parse(args: &[&str]) -> ModbusCommand {
    let mut argv = vec!["modbus"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .modbus
        .command
}

async fn device() -> (TcpDevice, String) {
    let mut one = Unit::default();
    one.holding_at(100, &[0x0000, 0x41AC, 0xFFFE]);
    one.coils.insert(0, true);
    let mut seven = Unit::default();
    seven.holding_at(5, &[1]);
    let dev = TcpDevice::start(State::new([(1, one), (7, seven)])).await;
    let addr = dev.addr.to_string();
    (dev, addr)
}

#[tokio::test]
async fn read_prints_raw_and_decoded_values() {
    let (_dev, addr) = device().await;
    let ModbusCommand::Read(args) = parse(&[
        "read",
        "--tcp",
        &addr,
        "--unit",
        "1",
        "--address",
        "100",
        "--count",
        "2",
        "--type",
        "f32",
        "--byte-order",
        "CDAB",
    ]) else {
        panic!("not a read");
    };
    let mut out = Vec::new();
    cli::read(&args, &mut out).await.expect("read works");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        text,
        "holding 100: 0x0000     0      0\n\
         holding 101: 0x41AC 16812  16812\n\
         f32 CDAB @100: 21.5\n"
    );

    let ModbusCommand::Read(args) =
        parse(&["read", "--tcp", &addr, "--table", "coil", "--address", "0"])
    else {
        panic!("not a read");
    };
    let mut out = Vec::new();
    cli::read(&args, &mut out).await.expect("read works");
    assert_eq!(String::from_utf8(out).expect("utf-8"), "coil 0: true\n");

    // An exception is an error that says so.
    let ModbusCommand::Read(args) = parse(&["read", "--tcp", &addr, "--address", "0"]) else {
        panic!("not a read");
    };
    let e = cli::read(&args, &mut Vec::new())
        .await
        .expect_err("no register 0");
    assert!(e.to_string().contains("exception 0x02"), "{e}");
}

#[tokio::test]
async fn scan_lists_the_units_that_answer() {
    let (_dev, addr) = device().await;
    let ModbusCommand::Scan(args) = parse(&[
        "scan",
        "--tcp",
        &addr,
        "--units",
        "1-8",
        "--address",
        "5",
        "--timeout",
        "100ms",
    ]) else {
        panic!("not a scan");
    };
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    cli::scan(&args, &mut out, false).await.expect("scan works");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        text,
        format!(
            "unit 1: answers with exception 0x02 (Illegal data address)\n\
             unit 7: answers (holding 5 = 0x0001 1)\n\
             2 of 8 unit id(s) answer on tcp {addr}: 1, 7\n"
        )
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_target_is_required() {
    assert!(Cli::try_parse_from([
        "modbus",
        "read",
        "--address",
        "1",
        "--tcp",
        "h",
        "--port",
        "p"
    ])
    .is_err());
}
