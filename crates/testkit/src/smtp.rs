//! A minimal SMTP relay for tests: speaks enough of the protocol for lettre, keeps every
//! message it accepts, or refuses MAIL FROM with a given reply.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The MAIL FROM rejection of a [`switchable_smtp_sink`]: `None` accepts; [`SILENT`] makes
/// the sink accept connections and never answer.
pub type Switch = Arc<Mutex<Option<&'static str>>>;

/// Set in a [`Switch`]: new connections are accepted and then never answered, not even with a
/// greeting, until the client hangs up (a relay that hangs).
pub const SILENT: &str = "silent";

/// Starts a sink on a free port: (port, messages received). With `reject`, MAIL FROM gets that
/// reply (e.g. `"451 4.3.0 later\r\n"`).
pub async fn smtp_sink(reject: Option<&'static str>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let (port, received, _) = switchable_smtp_sink(reject).await;
    (port, received)
}

/// Like [`smtp_sink`], with a switch: (port, messages received, the current MAIL FROM
/// rejection). Setting the switch to `None` makes the same sink accept from the next command
/// on — a provider that recovers.
pub async fn switchable_smtp_sink(
    reject: Option<&'static str>,
) -> (u16, Arc<Mutex<Vec<String>>>, Switch) {
    let (port, received, switch, _) = sink(reject, Picky::default()).await;
    (port, received, switch)
}

/// What a [`picky_smtp_sink`] refuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Picky {
    /// `RCPT TO` of an address containing this gets `550 5.1.1 no such user` (the
    /// transaction goes on, as real relays do; lettre then gives up before DATA).
    pub refuse_recipients_containing: Option<&'static str>,
    /// `RCPT TO` of an address containing this gets `450 4.2.2 mailbox full, try later` (a
    /// temporary refusal: a full mailbox, greylisting, an address being verified).
    pub defer_recipients_containing: Option<&'static str>,
    /// Advertise `AUTH PLAIN` and answer every AUTH with `535 5.7.8 credentials invalid`.
    pub refuse_credentials: bool,
}

/// A sink refusing what `picky` says: (port, messages received, each accepted message's
/// envelope recipients).
pub async fn picky_smtp_sink(
    picky: Picky,
) -> (u16, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Vec<String>>>>) {
    let (port, received, _, envelopes) = sink(None, picky).await;
    (port, received, envelopes)
}

type Envelopes = Arc<Mutex<Vec<Vec<String>>>>;

async fn sink(
    reject: Option<&'static str>,
    picky: Picky,
) -> (u16, Arc<Mutex<Vec<String>>>, Switch, Envelopes) {
    let switch = Arc::new(Mutex::new(reject));
    let reject = switch.clone();
    let envelopes: Envelopes = Arc::default();
    let accepted = envelopes.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            let reject = reject.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                if rejecting(&reject) == Some(SILENT) {
                    // read and drop whatever comes, answer nothing, until the client gives up
                    while let Ok(Some(_)) = lines.next_line().await {}
                    return;
                }
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                let mut rcpts: Vec<String> = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            store.lock().unwrap().push(data.take().unwrap());
                            accepted.lock().unwrap().push(std::mem::take(&mut rcpts));
                            write.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                        } else {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        continue;
                    }
                    let verb = line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" if picky.refuse_credentials => {
                            b"250-sink\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
                        }
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "AUTH" => b"535 5.7.8 credentials invalid\r\n",
                        "MAIL" => match rejecting(&reject) {
                            Some(code) => code.as_bytes(),
                            None => {
                                rcpts.clear();
                                b"250 2.1.0 ok\r\n"
                            }
                        },
                        "RCPT" => {
                            let to = line.split_once(':').map_or("", |(_, a)| a.trim());
                            let marked = |m: Option<&str>| m.is_some_and(|m| to.contains(m));
                            match () {
                                _ if marked(picky.refuse_recipients_containing) => {
                                    b"550 5.1.1 no such user\r\n"
                                }
                                _ if marked(picky.defer_recipients_containing) => {
                                    b"450 4.2.2 mailbox full, try later\r\n"
                                }
                                _ => {
                                    rcpts.push(to.trim_matches(['<', '>']).to_owned());
                                    b"250 2.1.5 ok\r\n"
                                }
                            }
                        }
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received, switch, envelopes)
}

fn rejecting(switch: &Mutex<Option<&'static str>>) -> Option<&'static str> {
    *switch.lock().unwrap()
}
