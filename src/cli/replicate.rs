//! `sspctl send` and `sspctl receive` (see [`crate::replication`]). With sspd serving the
//! pool the stream runs through its admin socket; otherwise sspctl opens the pool itself.

use super::{open_mode, output, pool_dir, progress, Cli};
use crate::admin::{AdminReply, AdminRequest, ClientError};
use crate::replication::{self, Item, ReceiveSpec, SendSpec, StreamReader};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

pub const SEND_EXAMPLES: &str = "Examples:
  sspctl send vm1@mon -f /backup/vm1-mon.ssp
  sspctl send vm1@tue --from vm1@mon | ssh backup sspctl --pool /var/lib/ssp/pool1 receive vm1
  sspctl send web1@s1 --from golden@v1 -f web1.ssp      (a clone, incremental from its image's snapshot)
  sspctl send -t 0100a0...  | sspctl --pool /p2 receive --resume vm1";

pub const RECEIVE_EXAMPLES: &str = "Examples:
  sspctl receive vm1 -i /backup/vm1-mon.ssp
  sspctl send vm1@tue --from vm1@mon | sspctl --pool /p2 receive vm1
  sspctl receive --token vm1          (print the resume token of an interrupted receive)
  sspctl send -t TOKEN | sspctl --pool /p2 receive --resume vm1
  sspctl receive --abort vm1";

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["snap", "token"])))]
pub struct SendArgs {
    /// The snapshot to send, LU@SNAP (or IMAGE@SNAP)
    pub snap: Option<String>,
    /// Send only the changes since this older snapshot of the same family (LU@BASE, or the
    /// IMAGE@SNAP a clone was made from); the receiver must hold it
    #[arg(long, value_name = "LU@BASE")]
    pub from: Option<String>,
    /// Write the stream to FILE instead of stdout (the global -o FILE does the same here)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Resume an interrupted stream where the receiver stopped (its `receive --token`)
    #[arg(short = 't', long = "token", value_name = "TOKEN", conflicts_with_all = ["snap", "from"])]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").args(["resume", "abort", "show_token"])))]
pub struct ReceiveArgs {
    /// The LU to create (full stream, or an incremental one from a snapshot another LU or image
    /// holds: a linked clone of it) or to update (incremental stream from NAME@BASE)
    pub name: String,
    /// Read the stream from FILE instead of stdin
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Continue an interrupted receive into NAME with the stream of `sspctl send -t TOKEN`
    #[arg(long)]
    pub resume: bool,
    /// Discard an interrupted receive into NAME (its staged data and its resume token)
    #[arg(long)]
    pub abort: bool,
    /// Print the resume token of an interrupted receive into NAME
    #[arg(long = "token")]
    pub show_token: bool,
    /// Apply an incremental stream although NAME was written since its base (what NAME held is
    /// kept as snapshot NAME@recv-old-TIME); disconnect NAME's clients
    #[arg(long)]
    pub force: bool,
}

/// Output options of `send`: its `-o` names the stream's file, not listing fields.
fn file_opts(cli: &Cli) -> output::OutputOpts {
    output::OutputOpts {
        json: cli.json,
        fields: None,
        no_headers: cli.no_headers,
    }
}

fn sending_to_stdout(cli: &Cli, a: &SendArgs) -> bool {
    a.file.is_none() && cli.output.is_none()
}

pub fn send(cli: &Cli, a: &SendArgs, out: &mut dyn Write) -> Result<()> {
    let dir = pool_dir(cli)?;
    let spec = SendSpec {
        snap: a.snap.clone().unwrap_or_default(),
        from: a.from.clone(),
        token: a.token.clone(),
    };
    let path = a
        .file
        .clone()
        .or_else(|| cli.output.as_ref().map(|v| PathBuf::from(v.join(","))));
    if path.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("refusing to write a binary stream to a terminal: redirect stdout or use -f FILE");
    }
    let to_stdout = sending_to_stdout(cli, a);
    // The stream goes to stdout unmarked: a receiver that went away fails the send.
    let mut sink: Box<dyn Write> = match &path {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut sink);
    let mut bar = progress::Progress::new("send", cli.json && !to_stdout, 1);
    let mut quiet = std::io::sink();
    let report: &mut dyn Write = if to_stdout { &mut quiet } else { out };
    let summary = match crate::admin::connect_with(&dir, &AdminRequest::Send(spec.clone())) {
        Ok(stream) => {
            let mut rd = std::io::BufReader::with_capacity(1 << 20, stream);
            let mut line = String::new();
            rd.read_line(&mut line).context("reading sspd's answer")?;
            if line.is_empty() {
                bail!("sspd closed the admin connection without a reply");
            }
            match crate::admin::decode_reply_line(&line)? {
                AdminReply::Sending { .. } => {}
                other => bail!("unexpected reply {other:?}"),
            }
            // Forward sspd's stream, checking it on the way: an incomplete one is an error.
            let mut r = StreamReader::new(&mut rd, Some(&mut w));
            let h = r.header()?;
            let total = h.volume_size - h.resume_offset;
            loop {
                match r
                    .next_item()
                    .context("the stream from sspd is incomplete (see sspd's log)")?
                {
                    Item::End(e) => {
                        break replication::SendSummary::of(
                            &h,
                            &e,
                            r.bytes() + crate::stream::end::LEN as u64,
                        )
                    }
                    Item::Extent { offset, length, .. } => {
                        bar.tick(report, offset + length - h.resume_offset, total)
                    }
                }
            }
        }
        Err(ClientError::NotRunning) => {
            let pd = open_mode(cli, true)?;
            let r = replication::plan_send(&pd.pool, &spec).and_then(|plan| {
                replication::write_stream(&pd.pool, &plan, &mut w, &mut |d, t| {
                    bar.tick(report, d, t)
                })
            });
            pd.pool.close()?;
            r?
        }
        Err(e) => return Err(e.into()),
    };
    drop(bar);
    w.flush()?;
    drop(w);
    if let Some(p) = &path {
        std::fs::File::open(p)?.sync_all()?;
    }
    if to_stdout {
        let what = if summary.base.is_empty() {
            summary.snapshot.clone()
        } else {
            format!("{} (changes since {})", summary.snapshot, summary.base)
        };
        eprintln!(
            "sent {what}: {} records, {} bytes of data, {} stream bytes",
            summary.records, summary.data_bytes, summary.stream_bytes
        );
    } else if output::report("send", &summary, &file_opts(cli), out)?.is_none() {
        writeln!(
            out,
            "sent {}{} to {}: {} records, {} bytes of data, {} stream bytes",
            summary.snapshot,
            if summary.base.is_empty() {
                String::new()
            } else {
                format!(" (changes since {})", summary.base)
            },
            path.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            summary.records,
            summary.data_bytes,
            summary.stream_bytes
        )?;
    }
    Ok(())
}

pub fn receive(cli: &Cli, a: &ReceiveArgs, out: &mut dyn Write) -> Result<()> {
    let dir = pool_dir(cli)?;
    if a.show_token {
        let token = replication::receive_token(&dir, &a.name)?;
        if cli.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"name": a.name, "token": token})
            )?;
        } else {
            writeln!(out, "{token}")?;
        }
        return Ok(());
    }
    if a.abort {
        let AdminReply::ReceiveAborted { name, snapshot } = super::admin(
            cli,
            AdminRequest::ReceiveAbort {
                name: a.name.clone(),
            },
        )?
        else {
            bail!("unexpected reply to receive --abort");
        };
        if cli.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"aborted": name, "snapshot": snapshot})
            )?;
        } else {
            writeln!(
                out,
                "discarded the partial receive of {snapshot} into {name}"
            )?;
        }
        return Ok(());
    }
    let spec = ReceiveSpec {
        name: a.name.clone(),
        resume: a.resume,
        force: a.force,
    };
    let mut input: Box<dyn Read> = match &a.input {
        Some(p) => Box::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut input = std::io::BufReader::with_capacity(1 << 20, &mut input);
    let mut bar = progress::Progress::new("receive", cli.json, 1);
    let summary = match crate::admin::connect_with(&dir, &AdminRequest::Receive(spec.clone())) {
        Ok(stream) => {
            let mut sock = stream.try_clone()?;
            let forwarded: Result<()> = (|| {
                let mut r = StreamReader::new(&mut input, Some(&mut sock));
                let h = r.header()?;
                let total = h.volume_size - h.resume_offset;
                loop {
                    match r.next_item()? {
                        Item::End(_) => return Ok(()),
                        Item::Extent { offset, length, .. } => {
                            bar.tick(out, offset + length - h.resume_offset, total)
                        }
                    }
                }
            })();
            // sspd answers once it has the whole stream, or as soon as it refuses it.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut line = String::new();
            std::io::BufReader::new(&stream).read_line(&mut line)?;
            if line.is_empty() {
                forwarded?;
                bail!("sspd closed the admin connection without a reply");
            }
            match crate::admin::decode_reply_line(&line) {
                Ok(AdminReply::Received(s)) => s,
                Ok(other) => bail!("unexpected reply {other:?}"),
                Err(e) => {
                    return Err(match forwarded {
                        Err(f) => anyhow::Error::from(e).context(format!("{f:#}")),
                        Ok(()) => e.into(),
                    })
                }
            }
        }
        Err(ClientError::NotRunning) => {
            let pd = open_mode(cli, false)?;
            let r = replication::receive(
                &pd.pool,
                &dir,
                &crate::admin::NoAttachments,
                &spec,
                &mut input,
                &mut |d, t| bar.tick(out, d, t),
            );
            let reclaimed = pd.pool.reclaim_all();
            pd.pool.close()?;
            reclaimed?;
            r?
        }
        Err(e) => return Err(e.into()),
    };
    drop(bar);
    if output::report("receive", &summary, &super::output_opts(cli), out)?.is_none() {
        writeln!(
            out,
            "received {} into LU {}{}: {} records, {} bytes of data{}",
            summary.snapshot,
            summary.lu,
            if summary.base.is_empty() {
                String::new()
            } else {
                format!(" (changes since {})", summary.base)
            },
            summary.records,
            summary.data_bytes,
            if summary.kept_old.is_empty() {
                String::new()
            } else {
                format!("; what {} held is kept as {}", summary.lu, summary.kept_old)
            }
        )?;
    }
    Ok(())
}
