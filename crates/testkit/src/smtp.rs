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
    let switch = Arc::new(Mutex::new(reject));
    let reject = switch.clone();
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
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            store.lock().unwrap().push(data.take().unwrap());
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
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "MAIL" => match rejecting(&reject) {
                            Some(code) => code.as_bytes(),
                            None => b"250 2.1.0 ok\r\n",
                        },
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
    (port, received, switch)
}

fn rejecting(switch: &Mutex<Option<&'static str>>) -> Option<&'static str> {
    *switch.lock().unwrap()
}
