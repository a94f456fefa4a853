//! The full-screen interactive client (`chat`, `chat ui`).
//!
//! Three parts: [`app`] holds the state and turns keys and network events into commands,
//! [`net`] keeps the connection and runs the commands, [`view`] draws. This module owns the
//! terminal: raw mode and the alternate screen are entered by [`TerminalGuard`] and left when
//! it drops, whether the loop ends normally, with an error, or by a panic (ratatui's panic
//! hook restores the terminal before the message prints).

mod app;
mod net;
mod view;

use std::io::IsTerminal;
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

use crate::config::Ctx;
use crate::error::CliError;
use app::{App, Cmd, NetEvent};

pub async fn run(ctx: &Ctx) -> Result<(), CliError> {
    let auth = ctx.auth()?;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::new(
            "invalid_argument",
            "the interactive client needs a terminal; the one-shot commands (chat --help) do not",
        ));
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let net = tokio::spawn(net::run(auth, cmd_rx, event_tx));
    let result = {
        let mut guard = TerminalGuard::enter()?;
        event_loop(&mut guard.terminal, cmd_tx, event_rx).await
    };
    // The command channel is closed: the network task closes the socket and ends.
    let abort = net.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), net)
        .await
        .is_err()
    {
        abort.abort();
    }
    result
}

/// Raw mode and the alternate screen for as long as it lives.
struct TerminalGuard {
    terminal: DefaultTerminal,
}

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard, CliError> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(e) => {
                // Undo whatever part of the setup succeeded.
                ratatui::restore();
                Err(CliError::io("cannot set up the terminal", &e))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    cmds: mpsc::UnboundedSender<Cmd>,
    mut events: mpsc::UnboundedReceiver<NetEvent>,
) -> Result<(), CliError> {
    let mut app = App::new(now_ms());
    let mut keys = EventStream::new();
    let mut net_running = true;
    loop {
        terminal
            .draw(|frame| view::draw(frame, &app))
            .map_err(|e| CliError::io("cannot draw", &e))?;
        if app.quit {
            return Ok(());
        }
        let out = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => app.handle_key(k),
                Some(Ok(_)) => Vec::new(),
                Some(Err(e)) => return Err(CliError::io("cannot read the terminal", &e)),
                None => return Ok(()),
            },
            event = events.recv(), if net_running => match event {
                Some(event) => app.handle_net(event),
                // The network task ended (only after a fatal error it reported).
                None => {
                    net_running = false;
                    Vec::new()
                }
            },
        };
        for cmd in out {
            // A closed channel means the network task stopped; the status says why.
            let _ = cmds.send(cmd);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
