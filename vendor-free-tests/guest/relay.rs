//! One guest connection to a host loopback port, for QEMU's
//! `guestfwd=tcp:ADDR:PORT-cmd:relay HOSTPORT`: QEMU starts this program
//! per connection with its standard input, output and error all on the
//! guest's socket, so it must never print anything. Compiled by
//! vendor-free-tests/systemd.rs with rustc (std only).
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

fn main() {
    let Some(port) = std::env::args().nth(1) else {
        std::process::exit(2);
    };
    let Ok(up) = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap_or(0))) else {
        std::process::exit(1);
    };
    let Ok(mut up_w) = up.try_clone() else {
        std::process::exit(1);
    };
    // Guest → host; the guest's end of stream becomes a half close, so
    // the server still answers a request the guest finished sending.
    std::thread::spawn(move || {
        let _ = copy(&mut std::io::stdin().lock(), &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    // Host → guest; the process ends (closing the guest's socket) when the
    // server closes.
    let mut up_r = up;
    let _ = copy(&mut up_r, &mut std::io::stdout().lock());
}

/// `io::copy` with a flush after every read: stdout is buffered.
fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = [0u8; 16384];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
