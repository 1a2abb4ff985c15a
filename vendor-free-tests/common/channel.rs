//! A loopback HTTPS release channel for the updater's tests: serves the
//! files of a directory, and on command misbehaves per file (a lying or
//! missing Content-Length, an endless body, a stall mid-body, a redirect, a
//! status). TLS is real, with a CA made in the test.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::standin::Pki;

/// How one file is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Serve {
    /// Declares this Content-Length, sends the file.
    Declare(u64),
    /// No Content-Length: the body is the file, ended by closing.
    NoLength,
    /// No Content-Length, bytes forever.
    Endless,
    /// Declares the file's length, sends this many bytes, then stalls.
    StallAfter(usize),
    Redirect(String),
    Status(u16),
}

/// A request's path and its header lines.
pub type Request = (String, Vec<String>);

pub struct Channel {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub pki: Pki,
    rules: Arc<Mutex<HashMap<String, Serve>>>,
    /// Every request line's path, and its headers, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Channel {
    /// Serves `dir` over TLS with `pki`'s certificate.
    pub fn start(dir: PathBuf, pki: Pki) -> Channel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = Channel {
            addr: listener.local_addr().unwrap(),
            dir,
            pki,
            rules: Arc::default(),
            requests: Arc::default(),
        };
        let (dir, rules, requests) = (c.dir.clone(), c.rules.clone(), c.requests.clone());
        let config = c.pki.server_config();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, rules, requests, config) =
                    (dir.clone(), rules.clone(), requests.clone(), config.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, config, &dir, &rules, &requests);
                });
            }
        });
        c
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/channel", self.addr.port())
    }

    pub fn ca_file(&self) -> PathBuf {
        let p = self.dir.with_extension("ca.pem");
        std::fs::write(&p, &self.pki.ca_pem).unwrap();
        p
    }

    pub fn rule(&self, file: &str, serve: Serve) {
        self.rules.lock().unwrap().insert(file.to_string(), serve);
    }

    pub fn clear_rules(&self) {
        self.rules.lock().unwrap().clear();
    }
}

fn handle(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    dir: &std::path::Path,
    rules: &Mutex<HashMap<String, Serve>>,
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        headers.push(h.trim().to_string());
    }
    drop(reader);
    requests.lock().unwrap().push((path.clone(), headers));
    let file = path.strip_prefix("/channel/").unwrap_or("").to_string();
    let rule = rules.lock().unwrap().get(&file).cloned();
    let body = std::fs::read(dir.join(&file));
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n")
    };
    match (rule, body) {
        (Some(Serve::Status(s)), _) => {
            tls.write_all(head(&format!("{s} Nope"), "Content-Length: 0\r\n").as_bytes())?
        }
        (Some(Serve::Redirect(to)), _) => tls.write_all(
            head(
                "302 Found",
                &format!("Location: {to}\r\nContent-Length: 0\r\n"),
            )
            .as_bytes(),
        )?,
        (Some(Serve::Endless), _) => {
            tls.write_all(head("200 OK", "").as_bytes())?;
            let chunk = vec![0x7fu8; 64 * 1024];
            loop {
                tls.write_all(&chunk)?;
            }
        }
        (_, Err(_)) => tls.write_all(head("404 Not Found", "Content-Length: 0\r\n").as_bytes())?,
        (None, Ok(b)) => {
            tls.write_all(head("200 OK", &format!("Content-Length: {}\r\n", b.len())).as_bytes())?;
            tls.write_all(&b)?;
        }
        (Some(Serve::Declare(n)), Ok(b)) => {
            tls.write_all(head("200 OK", &format!("Content-Length: {n}\r\n")).as_bytes())?;
            tls.write_all(&b[..b.len().min(n as usize)])?;
        }
        (Some(Serve::NoLength), Ok(b)) => {
            tls.write_all(head("200 OK", "").as_bytes())?;
            tls.write_all(&b)?;
        }
        (Some(Serve::StallAfter(n)), Ok(b)) => {
            tls.write_all(head("200 OK", &format!("Content-Length: {}\r\n", b.len())).as_bytes())?;
            tls.write_all(&b[..n.min(b.len())])?;
            tls.flush()?;
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    let mut rest = [0u8; 1];
    let _ = tls.sock.read(&mut rest);
    Ok(())
}
