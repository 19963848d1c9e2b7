//! A small SMTP receiver speaking enough of RFC 5321 for a real client (lettre) to deliver to it.
//! Every message it accepts is kept for the test to read.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::{Mutex, Notify},
};

#[derive(Clone, Debug)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }

    /// The six-digit code in the subject line.
    pub fn code(&self) -> Option<String> {
        let subject = self.header("subject")?;
        let digits: String = subject.chars().filter(|c| c.is_ascii_digit()).collect();
        (digits.len() == 6).then_some(digits)
    }
}

#[derive(Clone)]
pub struct MailServer {
    pub addr: SocketAddr,
    inbox: Arc<Mutex<Vec<Mail>>>,
    arrived: Arc<Notify>,
}

impl MailServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self { addr, inbox: Arc::default(), arrived: Arc::new(Notify::new()) };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(stream).await;
                });
            }
        });
        server
    }

    async fn session(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 test.localhost ESMTP ready\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let upper = line.trim_end().to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-test.localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
            } else if upper.starts_with("HELO") {
                b"250 test.localhost\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                from = angle(&line);
                to.clear();
                b"250 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                to.push(angle(&line));
                b"250 OK\r\n"
            } else if upper == "DATA" {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if lines.read_line(&mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    // undo dot-stuffing
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                self.inbox.lock().await.push(Mail { from: from.clone(), to: to.clone(), data });
                self.arrived.notify_waiters();
                b"250 OK queued\r\n"
            } else if upper == "RSET" || upper == "NOOP" {
                b"250 OK\r\n"
            } else if upper == "QUIT" {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                b"502 command not implemented\r\n"
            };
            write.write_all(reply).await?;
        }
    }

    pub async fn all(&self) -> Vec<Mail> {
        self.inbox.lock().await.clone()
    }

    /// Waits for the next message to `rcpt` (taking it out of the inbox).
    pub async fn next_to(&self, rcpt: &str, timeout: Duration) -> Option<Mail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            {
                let mut inbox = self.inbox.lock().await;
                if let Some(i) = inbox.iter().position(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(rcpt))) {
                    return Some(inbox.remove(i));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn angle(line: &str) -> String {
    match (line.find('<'), line.rfind('>')) {
        (Some(a), Some(b)) if b > a => line[a + 1..b].to_owned(),
        _ => line.split(':').nth(1).unwrap_or("").trim().to_owned(),
    }
}
