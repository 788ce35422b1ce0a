#!/usr/bin/env python3
"""A Modbus device played by pymodbus (a simulator nobody here wrote), for
tests/pymodbus.rs: Modbus TCP, or Modbus RTU on a serial port (one end of a socat pty
pair).

    python3 pymodbus_server.py PORT              # TCP; PORT 0: any free port
    python3 pymodbus_server.py --serial DEVICE   # RTU, 9600 8N1

Serves unit 1 and prints `listening 127.0.0.1:<port>` (TCP) or `listening <DEVICE>`
(RTU) once it takes requests; runs until it is killed. On RTU, a request to any other
unit id gets no answer at all (a unit that is off). Written for pymodbus 3.16 (the SimData/SimDevice
data model; the older ModbusDeviceContext is deprecated there). The register values
that pymodbus does not encode itself (the byte orders other than ABCD) are packed here
with `struct`, independently of the Rust decoder under test.

The register map (holding unless said otherwise; every address 0-based, as on the wire):

    0  f32 21.5 ABCD (pymodbus FLOAT32)   2  f32 21.5 CDAB    4  f32 21.5 BADC
    6  f32 21.5 DCBA                       8  u16 4242         9  i16 -2
   10  i32 -100000 (pymodbus INT32)       12  u32 0x12345678 CDAB
   14  u64 0x0102030405060708 (UINT64)    18  i64 -5 DCBA
   22  f64 -1.25 (FLOAT64)                26  string "pump-7" (pymodbus STRING, 3 registers)
   29  0                                  30  0x0008 (bit 3 set)
   31  i16 215 (setpoint, x 0.1)          32  f32 0.0 CDAB (writable)
   34..49 do not exist: reading them is exception 2 (illegal data address)
   50  u16 77 (beyond the gap)
 input 0: i16 215    input 1: u16 6150
 coils 0..15: 0 on, the rest off    discrete 0..15: 5 on, the rest off
"""

import asyncio
import struct
import sys

try:
    import pymodbus
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
except ImportError as e:  # A clear failure, never a skip: tests/run.sh installs it.
    sys.stderr.write(
        f"pymodbus_server.py: cannot use pymodbus ({e}); install it with "
        "`python3 -m pip install pymodbus` (tests/run.sh does)\n"
    )
    sys.exit(2)


def words(fmt, value, order):
    """The registers of `value` packed big endian by struct `fmt`, in `order`."""
    b = struct.pack(">" + fmt, value)
    if order in ("BADC", "DCBA"):
        b = b"".join(b[i + 1 : i + 2] + b[i : i + 1] for i in range(0, len(b), 2))
    regs = [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]
    if order in ("CDAB", "DCBA"):
        regs.reverse()
    return regs


def raw(address, regs):
    return SimData(address, values=regs, datatype=DataType.REGISTERS)


def device():
    holding = [
        SimData(0, values=21.5, datatype=DataType.FLOAT32),
        raw(2, words("f", 21.5, "CDAB")),
        raw(4, words("f", 21.5, "BADC")),
        raw(6, words("f", 21.5, "DCBA")),
        SimData(8, values=4242, datatype=DataType.UINT16),
        SimData(9, values=-2, datatype=DataType.INT16),
        SimData(10, values=-100000, datatype=DataType.INT32),
        raw(12, words("I", 0x12345678, "CDAB")),
        SimData(14, values=0x0102030405060708, datatype=DataType.UINT64),
        raw(18, words("q", -5, "DCBA")),
        SimData(22, values=-1.25, datatype=DataType.FLOAT64),
        SimData(26, values="pump-7", datatype=DataType.STRING),
        raw(29, [0]),
        raw(30, [0x0008]),
        SimData(31, values=215, datatype=DataType.INT16),
        raw(32, words("f", 0.0, "CDAB")),
        SimData(50, values=77, datatype=DataType.UINT16),
    ]
    inputs = [
        SimData(0, values=215, datatype=DataType.INT16),
        SimData(1, values=6150, datatype=DataType.UINT16),
    ]
    coils = [SimData(0, values=[True] + [False] * 15, datatype=DataType.BITS)]
    discrete = [
        SimData(0, values=[False] * 5 + [True] + [False] * 10, datatype=DataType.BITS)
    ]
    # Four separate tables, coils and discrete inputs addressed bit by bit.
    return SimDevice(id=1, simdata=(coils, discrete, holding, inputs))


async def tcp(port):
    server = ModbusTcpServer(device(), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    sockets = server.transport.sockets if server.transport else []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"listening 127.0.0.1:{bound} (pymodbus {pymodbus.__version__})", flush=True)
    await server.serving


def only_unit_1(sending, packet):
    """What goes on the line: nothing but the answers of unit 1."""
    if sending and packet[:1] != b"\x01":
        return b""
    return packet


async def serial(path):
    try:
        import serial as _  # noqa: F401  (pymodbus needs pyserial for serial ports)
    except ImportError as e:
        sys.exit(
            f"pymodbus_server.py: cannot use serial ports ({e}); install pyserial with "
            "`python3 -m pip install pyserial` (tests/run.sh does)"
        )
    server = ModbusSerialServer(
        device(),
        port=path,
        baudrate=9600,
        bytesize=8,
        parity="N",
        stopbits=1,
        # Other unit ids share the line: stay silent for them, as a unit that is off.
        # (pymodbus 3.16 answers exception 4 to an unknown id when the device is a
        # SimDevice, whatever ignore_missing_devices says, so drop those frames here.)
        trace_packet=only_unit_1,
    )
    await server.serve_forever(background=True)
    if server.transport is None:
        sys.exit(f"pymodbus_server.py: cannot open {path}")
    print(f"listening {path} (pymodbus {pymodbus.__version__})", flush=True)
    await server.serving


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serial":
        asyncio.run(serial(sys.argv[2]))
    elif len(sys.argv) == 2:
        asyncio.run(tcp(int(sys.argv[1])))
    else:
        sys.exit(__doc__)
