//! A minimal HTTP/1.1 client that sends exactly the bytes a test asks for (header values that are
//! not UTF-8 included) over a keep-alive connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct Client {
    port: u16,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client { port, conn: None }
    }

    fn connect(&mut self) -> std::io::Result<&mut (TcpStream, BufReader<TcpStream>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_nodelay(true)?;
            let r = BufReader::new(s.try_clone()?);
            self.conn = Some((s, r));
        }
        self.conn.as_mut().ok_or_else(|| std::io::Error::other("no connection"))
    }

    /// GET with extra headers.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.send("GET", path, &h)
    }

    /// Sends a request; retries once on a fresh connection if the kept-alive one was closed.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &[u8])]) -> Response {
        match self.try_send(method, path, headers) {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                self.try_send(method, path, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            }
        }
    }

    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if !has_host {
            req.extend_from_slice(b"host: test.local\r\n");
        }
        for (k, v) in headers {
            req.extend_from_slice(k.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        if method == "POST" || method == "PUT" {
            req.extend_from_slice(b"content-length: 0\r\n");
        }
        req.extend_from_slice(b"\r\n");
        let (stream, reader) = self.connect()?;
        stream.write_all(&req)?;
        let response = read_response(reader);
        if response.as_ref().map_or(true, |r| r.header("connection") == Some("close")) {
            self.conn = None;
        }
        response
    }
}

fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v): &(String, String)| v.clone());
    let body = if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut b = vec![0; len];
        reader.read_exact(&mut b)?;
        b
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            chunk.truncate(n);
            out.extend(chunk);
            if n == 0 {
                break;
            }
        }
        out
    } else {
        Vec::new()
    };
    Ok(Response { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}
