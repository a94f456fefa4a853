//! Drawing the interactive client: the conversation list, the messages of the selected
//! conversation, the input line and a status line. Pure functions of [`App`].

use std::collections::{BTreeMap, HashMap, HashSet};

use chat_types::{Attachment, Message, MessageRef, Seq, UserId};
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph};
use ratatui::Frame;
use unicode_width::UnicodeWidthChar;

use crate::output::{body_text, format_clock, format_size, highlight_pieces, sanitize};
use crate::ui::app::{App, Conv, Focus, SearchState, SearchView};

pub fn draw(frame: &mut Frame, app: &App) {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let list_width = (main.width / 4).clamp(12, 28);
    let [list, messages] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(1)]).areas(main);
    draw_list(frame, app, list);
    draw_messages(frame, app, messages);
    draw_input(frame, app, input);
    draw_status(frame, app, status);
}

fn pane(title: String, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    Block::bordered().border_style(style).title(title)
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let items: Vec<ListItem> = app
        .convs
        .iter()
        .map(|c| {
            let mut title = sanitize(&app.title(c));
            if c.unread > 0 {
                title.push_str(&format!(" ({})", c.unread));
            }
            let style = if c.unread > 0 {
                Style::default().add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            ListItem::new(Line::styled(title, style))
        })
        .collect();
    let empty = items.is_empty();
    let list = List::new(items)
        .block(pane("Conversations".to_owned(), app.focus == Focus::List))
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = ListState::default().with_selected(app.selected);
    frame.render_stateful_widget(list, area, &mut state);
    if empty {
        let inner = Block::bordered().inner(area);
        frame.render_widget(
            Paragraph::new("none yet").style(Style::default().fg(Color::DarkGray)),
            inner,
        );
    }
}

fn draw_messages(frame: &mut Frame, app: &App, area: Rect) {
    if let Some(search) = &app.search {
        return draw_search(frame, app, search, area);
    }
    let Some(conv) = app.selected_conv() else {
        let block = pane("Messages".to_owned(), false);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        frame.render_widget(
            Paragraph::new("Type /open USER and Enter to start a conversation.")
                .style(Style::default().fg(Color::DarkGray)),
            inner,
        );
        return;
    };
    let block = pane(sanitize(&app.title(conv)), false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let lines = message_lines(app, conv, inner.width);
    let height = usize::from(inner.height);
    let scroll = usize::from(app.scroll).min(lines.len().saturating_sub(height));
    let end = lines.len() - scroll;
    let start = end.saturating_sub(height);
    // The latest message sits at the bottom, as in any chat.
    let mut shown = vec![Line::default(); height.saturating_sub(end - start)];
    shown.extend_from_slice(&lines[start..end]);
    frame.render_widget(Paragraph::new(shown), inner);
}

/// Every visual line of a conversation, wrapped to `width`.
pub fn message_lines(app: &App, conv: &Conv, width: u16) -> Vec<Line<'static>> {
    let me = app.my_id();
    let mut lines = Vec::new();
    for shown in shown_messages(&conv.messages) {
        let name_style = if Some(shown.sender) == me {
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD)
        };
        let mut spans = vec![
            Span::styled(
                format!("{} ", format_clock(shown.ts_ms)),
                Style::default().fg(Color::DarkGray),
            ),
            Span::styled(
                format!("{}: ", sanitize(&app.name(shown.sender))),
                name_style,
            ),
        ];
        if shown.withdrawn {
            spans.push(Span::styled(
                "(message withdrawn)",
                Style::default()
                    .fg(Color::DarkGray)
                    .add_modifier(Modifier::ITALIC),
            ));
        } else {
            spans.push(Span::raw(shown.body));
        }
        if shown.edited {
            spans.push(Span::styled(
                " (edited)",
                Style::default().fg(Color::DarkGray),
            ));
        }
        if !shown.reactions.is_empty() {
            spans.push(Span::styled(
                format!(" [{}]", shown.reactions),
                Style::default().fg(Color::Magenta),
            ));
        }
        lines.extend(wrap(spans, width));
        if !shown.withdrawn {
            for a in &shown.attachments {
                lines.extend(wrap(attachment_spans(a), width));
            }
        }
    }
    for p in &conv.pending {
        let (note, style) = match (&p.failed, p.upload) {
            (Some(e), _) => (
                format!(" (not sent: {})", sanitize(e)),
                Style::default().fg(Color::Red),
            ),
            (None, Some((done, total))) => (
                match (done.saturating_mul(100)).checked_div(total) {
                    Some(percent) => format!(" (uploading… {}%)", percent.min(100)),
                    None => " (uploading…)".to_owned(),
                },
                Style::default().fg(Color::DarkGray),
            ),
            (None, None) => (
                " (sending…)".to_owned(),
                Style::default().fg(Color::DarkGray),
            ),
        };
        let name = me.map(|m| app.name(m)).unwrap_or_else(|| "me".into());
        let body = match &p.file {
            Some(file) => format!("\u{1f4ce} {}", sanitize(file)),
            None => sanitize(&p.body),
        };
        let spans = vec![
            Span::styled("--:-- ", Style::default().fg(Color::DarkGray)),
            Span::styled(format!("{}: ", sanitize(&name)), style),
            Span::styled(body, style),
            Span::styled(note, style.add_modifier(Modifier::ITALIC)),
        ];
        lines.extend(wrap(spans, width));
    }
    lines
}

/// `      📎 cat.png (47.1 KiB)`, under its message.
fn attachment_spans(a: &Attachment) -> Vec<Span<'static>> {
    vec![
        Span::raw("      "),
        Span::styled(
            format!("\u{1f4ce} {} ({})", sanitize(&a.name), format_size(a.size)),
            Style::default().fg(Color::Blue),
        ),
    ]
}

/// The `/search` results in the message pane: newest first, matches in reverse video.
fn draw_search(frame: &mut Frame, app: &App, search: &SearchView, area: Rect) {
    let title = format!("Search: {} (Esc closes)", sanitize(&search.query));
    let block = pane(title, false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let lines = search_lines(app, search, inner.width);
    let height = usize::from(inner.height);
    let start = usize::from(search.scroll).min(lines.len().saturating_sub(height));
    let end = (start + height).min(lines.len());
    frame.render_widget(Paragraph::new(lines[start..end].to_vec()), inner);
}

/// Every visual line of the search results, wrapped to `width`.
pub fn search_lines(app: &App, search: &SearchView, width: u16) -> Vec<Line<'static>> {
    let dim = Style::default().fg(Color::DarkGray);
    let page = match &search.state {
        SearchState::Searching => return vec![Line::styled("searching…", dim)],
        SearchState::Failed(e) => {
            return wrap(
                vec![Span::styled(
                    format!("search failed: {}", sanitize(e)),
                    Style::default().fg(Color::Red),
                )],
                width,
            )
        }
        SearchState::Done(page) => page,
    };
    let mut lines = Vec::new();
    if page.hits.is_empty() {
        lines.push(Line::styled("no messages found", dim));
    }
    let me = app.my_id();
    for hit in &page.hits {
        let members = hit.conversation.direct_members();
        let place = match members.iter().copied().find(|u| Some(*u) != me) {
            Some(peer) => app.name(peer),
            None if !members.is_empty() => app.name(hit.sender),
            None => hit.conversation.to_string(),
        };
        let mut spans = vec![
            Span::styled(format!("[{}] ", sanitize(&place)), dim),
            Span::styled(format!("{} ", format_clock(hit.ts_ms)), dim),
            Span::styled(
                format!("{}: ", sanitize(&app.name(hit.sender))),
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
            ),
        ];
        // `sanitize` keeps one character per character: the highlight offsets still hold.
        for (piece, matched) in highlight_pieces(&sanitize(&hit.snippet), &hit.highlights) {
            if matched {
                spans.push(Span::styled(
                    piece,
                    Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
                ));
            } else {
                spans.push(Span::raw(piece));
            }
        }
        lines.extend(wrap(spans, width));
    }
    if page.more {
        lines.push(Line::styled(
            "more results: `chat search` prints them all",
            dim,
        ));
    }
    if page.partial {
        lines.push(Line::styled(
            "some nodes did not answer in time: results may be missing",
            dim,
        ));
    }
    lines
}

/// A message as shown: its latest edit applied, a deletion as withdrawn, reactions below it.
#[derive(Debug, PartialEq, Eq)]
pub struct Shown {
    pub seq: Seq,
    pub sender: UserId,
    pub ts_ms: u64,
    pub body: String,
    pub edited: bool,
    pub withdrawn: bool,
    /// `👍 2, 🎉` (each reaction once per sender).
    pub reactions: String,
    pub attachments: Vec<Attachment>,
}

pub fn shown_messages(messages: &BTreeMap<Seq, Message>) -> Vec<Shown> {
    let mut edits: HashMap<Seq, &Message> = HashMap::new();
    let mut deleted: HashSet<Seq> = HashSet::new();
    let mut reactions: HashMap<Seq, Vec<(UserId, String)>> = HashMap::new();
    let sender_of = |seq: Seq| messages.get(&seq).map(|m| m.sender);
    for m in messages.values() {
        match m.refers {
            // Only the author may edit or delete; the server checks, this only agrees.
            Some(MessageRef::Edit { seq }) if sender_of(seq) == Some(m.sender) => {
                edits.insert(seq, m);
            }
            Some(MessageRef::Delete { seq }) if sender_of(seq) == Some(m.sender) => {
                deleted.insert(seq);
            }
            Some(MessageRef::Reaction { seq }) if messages.contains_key(&seq) => {
                let r = reactions.entry(seq).or_default();
                let entry = (m.sender, sanitize(&m.body));
                if !r.contains(&entry) {
                    r.push(entry);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for m in messages.values() {
        let applied = match m.refers {
            None | Some(MessageRef::Reply { .. }) => false,
            Some(MessageRef::Edit { seq }) | Some(MessageRef::Delete { seq }) => {
                sender_of(seq) == Some(m.sender)
            }
            Some(MessageRef::Reaction { seq }) => messages.contains_key(&seq),
            // Anything else (group changes, ...) is shown on its own line.
            Some(_) => false,
        };
        if applied {
            continue;
        }
        let edit = edits.get(&m.seq);
        let body = match (edit, m.refers) {
            (Some(e), Some(MessageRef::Reply { seq })) => {
                format!("(reply to #{seq}) {}", sanitize(&e.body))
            }
            (Some(e), _) => sanitize(&e.body),
            (None, _) => body_text(m),
        };
        let mut counted: Vec<(String, usize)> = Vec::new();
        for (_, r) in reactions.get(&m.seq).into_iter().flatten() {
            match counted.iter_mut().find(|(body, _)| body == r) {
                Some((_, n)) => *n += 1,
                None => counted.push((r.clone(), 1)),
            }
        }
        let reactions = counted
            .iter()
            .map(|(r, n)| {
                if *n > 1 {
                    format!("{r} {n}")
                } else {
                    r.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Shown {
            seq: m.seq,
            sender: m.sender,
            ts_ms: m.ts_ms,
            body,
            edited: edit.is_some(),
            withdrawn: deleted.contains(&m.seq),
            reactions,
            attachments: m.attachments.clone(),
        });
    }
    out
}

/// Breaks styled text into lines of at most `width` columns: at the last space that fits,
/// or inside a word longer than the line (so any text fits).
pub fn wrap(spans: Vec<Span<'static>>, width: u16) -> Vec<Line<'static>> {
    let width = usize::from(width.max(1));
    let chars: Vec<(char, Style)> = spans
        .iter()
        .flat_map(|s| s.content.chars().map(move |c| (c, s.style)))
        .collect();
    // Each line is a range of `chars`.
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut used = 0;
    let mut last_space: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let (c, _) = chars[i];
        let w = c.width().unwrap_or(0);
        if used + w > width && i > start {
            let end = match last_space {
                Some(s) if s > start => s + 1,
                _ => i,
            };
            ranges.push(start..end);
            start = end;
            used = chars[start..i]
                .iter()
                .map(|(c, _)| c.width().unwrap_or(0))
                .sum();
            last_space = None;
            continue;
        }
        if c == ' ' {
            last_space = Some(i);
        }
        used += w;
        i += 1;
    }
    ranges.push(start..chars.len());
    ranges
        .into_iter()
        .map(|range| {
            let mut line: Vec<Span<'static>> = Vec::new();
            let mut piece = String::new();
            let mut style = None;
            for &(c, s) in &chars[range] {
                if style.is_some_and(|st| st != s) {
                    line.push(Span::styled(std::mem::take(&mut piece), style.unwrap_or(s)));
                }
                style = Some(s);
                piece.push(c);
            }
            if let Some(st) = style {
                line.push(Span::styled(piece, st));
            }
            Line::from(line)
        })
        .collect()
}

fn draw_input(frame: &mut Frame, app: &App, area: Rect) {
    let title = match app.selected_conv() {
        Some(c) => format!("Message to {}", sanitize(&app.title(c))),
        None => "Command (/open USER, /search TEXT, /quit)".to_owned(),
    };
    let block = pane(title, app.focus == Focus::Input);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let text = sanitize(&app.input);
    // Show the end of a line longer than the pane, with room for the cursor.
    let room = usize::from(inner.width.saturating_sub(1));
    let mut shown: Vec<char> = Vec::new();
    let mut used = 0;
    for c in text.chars().rev() {
        let w = c.width().unwrap_or(0);
        if used + w > room {
            break;
        }
        used += w;
        shown.push(c);
    }
    let shown: String = shown.into_iter().rev().collect();
    frame.render_widget(Paragraph::new(shown), inner);
    if app.focus == Focus::Input && inner.width > 0 && inner.height > 0 {
        let x = inner.x.saturating_add(u16::try_from(used).unwrap_or(0));
        frame.set_cursor_position(Position::new(x, inner.y));
    }
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let (mark, color) = if app.connected {
        ("● ", Color::Green)
    } else {
        ("○ ", Color::Red)
    };
    let line = Line::from(vec![
        Span::styled(mark, Style::default().fg(color)),
        Span::raw(sanitize(&app.status)),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chat_types::{ClientMsgId, ConversationId};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;
    use crate::ui::app::NetEvent;

    fn msg(seq: u64, sender: u64, body: &str, refers: Option<MessageRef>) -> Message {
        Message {
            conversation: ConversationId::direct(UserId(1), UserId(2)),
            seq: Seq(seq),
            sender: UserId(sender),
            client_msg_id: ClientMsgId::new(format!("c{seq}")).unwrap(),
            body: body.into(),
            ts_ms: 0,
            refers,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn edits_deletions_and_reactions_apply_to_their_target() {
        let log: BTreeMap<Seq, Message> = [
            msg(1, 1, "lunch?", None),
            msg(2, 2, "yes", Some(MessageRef::Reply { seq: Seq(1) })),
            msg(3, 1, "lunch at 1?", Some(MessageRef::Edit { seq: Seq(1) })),
            msg(4, 2, "👍", Some(MessageRef::Reaction { seq: Seq(1) })),
            msg(5, 1, "👍", Some(MessageRef::Reaction { seq: Seq(1) })),
            msg(6, 2, "", Some(MessageRef::Delete { seq: Seq(2) })),
            // Not the author: shown as it is, changes nothing.
            msg(7, 2, "hacked", Some(MessageRef::Edit { seq: Seq(1) })),
        ]
        .into_iter()
        .map(|m| (m.seq, m))
        .collect();
        let shown = shown_messages(&log);
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert_eq!(shown[0].body, "lunch at 1?");
        assert!(shown[0].edited);
        assert_eq!(shown[0].reactions, "👍 2");
        assert!(shown[1].withdrawn);
        assert_eq!(shown[2].body, "(edit of #1) hacked");
    }

    #[test]
    fn wrapping_never_exceeds_the_width() {
        let spans = vec![
            Span::raw("12:00 "),
            Span::styled("bob: ", Style::default().fg(Color::Yellow)),
            Span::raw("a fairly long message with ワイド characters"),
        ];
        let text: String = spans.iter().map(|s| s.content.as_ref()).collect();
        for width in [0u16, 1, 2, 7, 20, 200] {
            let lines = wrap(spans.clone(), width);
            assert!(!lines.is_empty());
            for l in &lines {
                assert!(l.width() <= usize::from(width.max(2)), "{width}: {l:?}");
            }
            // Nothing is lost or added.
            let joined: String = lines
                .iter()
                .flat_map(|l| l.spans.iter().map(|s| s.content.as_ref()))
                .collect();
            assert_eq!(joined, text);
        }
        let lines = wrap(vec![Span::raw("aaa bbb ccc")], 8);
        let rows: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        assert_eq!(rows, vec!["aaa bbb ", "ccc"]);
        assert_eq!(wrap(vec![Span::raw("abcdef")], 4).len(), 2);
        assert_eq!(wrap(Vec::new(), 4).len(), 1);
    }

    fn screen_of(app: &App, w: u16, h: u16) -> (String, ratatui::buffer::Buffer) {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let screen = buffer.content().iter().map(|c| c.symbol()).collect();
        (screen, buffer)
    }

    #[test]
    fn attachments_show_under_their_message_and_search_hits_are_marked() {
        let mut app = App::new(0);
        let mut m = msg(1, 2, "look", None);
        m.attachments.push(Attachment {
            id: chat_types::MediaId::from_random([7; 16]),
            mime: "image/png".into(),
            kind: chat_types::MediaKind::Image,
            size: 1536,
            name: "cat\u{1b}.png".into(),
            width: Some(4),
            height: Some(4),
            thumbnails: Vec::new(),
        });
        app.handle_net(NetEvent::Message(m));
        let (screen, _) = screen_of(&app, 80, 12);
        assert!(screen.contains("user 2: look"), "{screen}");
        assert!(screen.contains("cat\u{fffd}.png (1.5 KiB)"), "{screen}");

        app.search = Some(SearchView {
            query: "meet".into(),
            state: SearchState::Done(crate::ui::app::SearchPage {
                hits: vec![chat_types::search::MessageHit {
                    conversation: ConversationId::direct(UserId(1), UserId(2)),
                    seq: Seq(3),
                    sender: UserId(2),
                    ts_ms: 0,
                    body: "we meet at noon".into(),
                    snippet: "we meet at noon".into(),
                    // Out-of-range offsets from a confused server are clipped, not a panic.
                    highlights: vec![(3, 7), (40, 90)],
                }],
                partial: true,
                more: false,
            }),
            scroll: 0,
        });
        let (screen, buffer) = screen_of(&app, 80, 12);
        assert!(screen.contains("Search: meet"), "{screen}");
        assert!(screen.contains("user 2: we meet at noon"), "{screen}");
        assert!(screen.contains("results may be missing"), "{screen}");
        let cells: Vec<&ratatui::buffer::Cell> = buffer.content().iter().collect();
        let at = screen.find("meet at").unwrap();
        // Single-width text: byte offsets in the screen are cell offsets up to here.
        let prefix_cells = screen[..at].chars().count();
        assert!(cells[prefix_cells]
            .modifier
            .contains(Modifier::REVERSED | Modifier::BOLD));
        assert!(!cells[prefix_cells + 5]
            .modifier
            .contains(Modifier::REVERSED));
        for (w, h) in [(1, 1), (5, 3), (20, 6)] {
            screen_of(&app, w, h);
        }
    }

    #[test]
    fn drawing_any_state_on_any_size_does_not_panic() {
        let mut app = App::new(0);
        app.handle_net(NetEvent::Message(msg(1, 2, "hi\u{1b}[31m there", None)));
        app.input = "x".repeat(500);
        for (w, h) in [(1, 1), (5, 3), (20, 6), (80, 24), (200, 60)] {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
            terminal.draw(|f| draw(f, &app)).unwrap();
        }
        let mut terminal = Terminal::new(TestBackend::new(80, 12)).unwrap();
        terminal.draw(|f| draw(f, &app)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(screen.contains("user 2: hi\u{fffd}[31m there"), "{screen}");
    }
}
