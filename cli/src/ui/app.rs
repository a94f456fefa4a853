//! The state of the interactive client and how keys and network events change it.
//!
//! Pure: no terminal and no socket here. Every handler returns the [`Cmd`]s for the network
//! task, so the whole behaviour can be tested by feeding events.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use chat_client::Welcome;
use chat_types::search::MessageHit;
use chat_types::{
    validate_username, ClientMsgId, ConversationId, ConversationInfo, ConversationSummary, Message,
    Seq, UserId,
};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::commands::new_client_msg_id;
use crate::error::CliError;
use crate::media::upload_name;

/// What the UI asks the network task to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// `open_direct` by username.
    Open(String),
    /// Send until acked, with this client message id on every try.
    Send {
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
    },
    /// Upload the file at `path`, then send it (an empty body with the file attached) like
    /// `Send`.
    SendFile {
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        path: PathBuf,
    },
    /// The first page of a message search.
    Search(String),
    /// A page of history: after `after`, or the latest page.
    History {
        conversation: ConversationId,
        after: Option<Seq>,
    },
    /// A user's username.
    Lookup(UserId),
    /// The user's conversations (after a resync).
    ListConversations,
}

/// What the network task reports.
#[derive(Clone, Debug)]
pub enum NetEvent {
    Connecting,
    Connected(Welcome),
    /// The connection is down; the task reconnects by itself.
    Disconnected(String),
    /// The session is gone (or the server refuses this client): no more reconnecting.
    Fatal(CliError),
    Opened(ConversationInfo),
    OpenFailed {
        username: String,
        error: CliError,
    },
    Message(Message),
    History {
        conversation: ConversationId,
        messages: Vec<Message>,
    },
    Acked {
        message: Message,
    },
    SendFailed {
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        error: CliError,
    },
    /// How far the upload of a `SendFile` got.
    UploadProgress {
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        done: u64,
        total: u64,
    },
    /// The file of a `SendFile` is uploaded; the message is in the outbox.
    Uploaded {
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
    },
    SearchResults {
        query: String,
        result: Result<SearchPage, CliError>,
    },
    Name(UserId, String),
    /// The server could not replay the missed events.
    Resync,
    Conversations(Vec<ConversationSummary>),
    /// Something failed that the user should know about.
    Problem(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    List,
    Input,
}

/// A message typed here and not acknowledged yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// The name of the file a `/file` sends.
    pub file: Option<String>,
    /// While the file uploads: bytes done and in all.
    pub upload: Option<(u64, u64)>,
    /// Set when the server refused it for good.
    pub failed: Option<String>,
}

/// One page of search results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPage {
    pub hits: Vec<MessageHit>,
    /// Some node did not answer in time.
    pub partial: bool,
    /// There are more pages than this one.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchState {
    Searching,
    Done(SearchPage),
    Failed(String),
}

/// The results of `/search`, shown in the message pane until Esc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchView {
    pub query: String,
    pub state: SearchState,
    /// Lines scrolled down from the first result.
    pub scroll: u16,
}

#[derive(Clone, Debug)]
pub struct Conv {
    pub id: ConversationId,
    /// The other member (oneself for notes to self), once known.
    pub peer: Option<UserId>,
    /// Stored messages by seq: a message seen twice (push and history) shows once.
    pub messages: BTreeMap<Seq, Message>,
    pub pending: Vec<Pending>,
    pub unread: u32,
}

impl Conv {
    fn new(id: ConversationId, me: Option<UserId>) -> Conv {
        Conv {
            id,
            peer: peer_of(id, me),
            messages: BTreeMap::new(),
            pending: Vec::new(),
            unread: 0,
        }
    }

    fn last_seq(&self) -> Option<Seq> {
        self.messages.keys().next_back().copied()
    }
}

/// The other member of a direct conversation, or `me` for notes to self.
/// `None` for a conversation that is not direct (a group is named by its id).
fn peer_of(id: ConversationId, me: Option<UserId>) -> Option<UserId> {
    let me = me?;
    let members = id.direct_members();
    if members.is_empty() {
        return None;
    }
    members.iter().copied().find(|u| *u != me).or(Some(me))
}

pub const HELP: &str = "Tab: switch pane · Up/Down: conversation · Enter: send · /open USER · \
     /file PATH · /search TEXT · /quit · PgUp/PgDn: scroll";

#[derive(Debug)]
pub struct App {
    pub me: Option<(UserId, String)>,
    pub convs: Vec<Conv>,
    pub selected: Option<usize>,
    pub focus: Focus,
    pub input: String,
    pub status: String,
    pub connected: bool,
    pub names: HashMap<UserId, String>,
    /// Lines scrolled up from the bottom of the message pane.
    pub scroll: u16,
    pub quit: bool,
    /// `/search` results, shown instead of the messages while set.
    pub search: Option<SearchView>,
    /// When the session started (ms since the epoch): after a resync, conversations active
    /// since then are added.
    started_ms: u64,
    /// Usernames being opened, so that the answer selects the conversation.
    opening: Vec<String>,
}

impl App {
    pub fn new(started_ms: u64) -> App {
        App {
            me: None,
            convs: Vec::new(),
            selected: None,
            focus: Focus::Input,
            input: String::new(),
            status: format!("connecting… {HELP}"),
            connected: false,
            names: HashMap::new(),
            scroll: 0,
            quit: false,
            search: None,
            started_ms,
            opening: Vec::new(),
        }
    }

    pub fn my_id(&self) -> Option<UserId> {
        self.me.as_ref().map(|(id, _)| *id)
    }

    pub fn selected_conv(&self) -> Option<&Conv> {
        self.selected.and_then(|i| self.convs.get(i))
    }

    /// The name shown for a user.
    pub fn name(&self, user: UserId) -> String {
        self.names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user {user}"))
    }

    /// The title of a conversation: the other member's name.
    pub fn title(&self, conv: &Conv) -> String {
        match conv.peer {
            Some(p) if Some(p) == self.my_id() => format!("{} (notes)", self.name(p)),
            Some(p) => self.name(p),
            None => conv.id.to_string(),
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Cmd> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c' | 'd') if ctrl => {
                self.quit = true;
                Vec::new()
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::List => Focus::Input,
                    Focus::Input => Focus::List,
                };
                Vec::new()
            }
            KeyCode::Up => {
                self.move_selection(-1);
                Vec::new()
            }
            KeyCode::Down => {
                self.move_selection(1);
                Vec::new()
            }
            KeyCode::PageUp => {
                match &mut self.search {
                    Some(s) => s.scroll = s.scroll.saturating_sub(10),
                    None => self.scroll = self.scroll.saturating_add(10),
                }
                Vec::new()
            }
            KeyCode::PageDown => {
                match &mut self.search {
                    Some(s) => s.scroll = s.scroll.saturating_add(10),
                    None => self.scroll = self.scroll.saturating_sub(10),
                }
                Vec::new()
            }
            KeyCode::Esc => {
                // The first Esc clears the line, the next one closes the search results.
                if self.input.is_empty() {
                    self.search = None;
                } else {
                    self.input.clear();
                }
                Vec::new()
            }
            KeyCode::Enter if self.focus == Focus::List => {
                self.focus = Focus::Input;
                Vec::new()
            }
            KeyCode::Enter => self.submit(),
            KeyCode::Backspace => {
                self.focus = Focus::Input;
                self.input.pop();
                Vec::new()
            }
            KeyCode::Char('k') if self.focus == Focus::List && !ctrl => {
                self.move_selection(-1);
                Vec::new()
            }
            KeyCode::Char('j') if self.focus == Focus::List && !ctrl => {
                self.move_selection(1);
                Vec::new()
            }
            KeyCode::Char(c) if !ctrl => {
                self.focus = Focus::Input;
                // Bounded: a paste of a book does not grow the line forever.
                if self.input.len() < 64 * 1024 {
                    self.input.push(c);
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn move_selection(&mut self, delta: i32) {
        if self.convs.is_empty() {
            return;
        }
        let last = self.convs.len() - 1;
        self.search = None;
        let next = match self.selected {
            None => 0,
            Some(i) if delta < 0 => i.saturating_sub(1),
            Some(i) => (i + 1).min(last),
        };
        self.select(next);
    }

    fn select(&mut self, index: usize) {
        if self.selected != Some(index) {
            self.scroll = 0;
        }
        self.selected = Some(index);
        if let Some(c) = self.convs.get_mut(index) {
            c.unread = 0;
        }
    }

    /// Enter in the input line: a command, or a message to the selected conversation.
    fn submit(&mut self) -> Vec<Cmd> {
        let line = std::mem::take(&mut self.input);
        let text = line.trim();
        if text.is_empty() {
            return Vec::new();
        }
        if let Some(command) = text.strip_prefix('/').filter(|c| !c.starts_with('/')) {
            // The commands whose argument is the rest of the line (spaces and all).
            let (word, rest) = command
                .split_once(char::is_whitespace)
                .map_or((command, ""), |(w, r)| (w, r.trim()));
            match (word, rest) {
                ("file" | "f", "") => {
                    self.status = "usage: /file PATH (sends the file to this conversation)".into();
                    return Vec::new();
                }
                ("file" | "f", path) => return self.send_file(path, &line),
                ("search" | "s", "") => {
                    self.status = "usage: /search TEXT".into();
                    return Vec::new();
                }
                ("search" | "s", query) => {
                    let query = query.to_owned();
                    self.search = Some(SearchView {
                        query: query.clone(),
                        state: SearchState::Searching,
                        scroll: 0,
                    });
                    self.status = "Esc (on an empty line) closes the search results".into();
                    return vec![Cmd::Search(query)];
                }
                _ => {}
            }
            let mut words = command.split_whitespace();
            return match (words.next(), words.next(), words.next()) {
                (Some("quit" | "q" | "exit"), None, None) => {
                    self.quit = true;
                    Vec::new()
                }
                (Some("open" | "o"), Some(user), None) => match validate_username(user) {
                    Ok(user) => {
                        self.search = None;
                        self.status = format!("opening {user}…");
                        self.opening.push(user.clone());
                        vec![Cmd::Open(user)]
                    }
                    Err(e) => {
                        self.status = format!("cannot open {user:?}: {e}");
                        Vec::new()
                    }
                },
                (Some("help" | "h"), None, None) => {
                    self.status = HELP.to_owned();
                    Vec::new()
                }
                _ => {
                    self.status = format!("unknown command /{command}: {HELP}");
                    Vec::new()
                }
            };
        }
        // "//text" sends "/text".
        let body = line
            .trim_end()
            .strip_prefix('/')
            .filter(|b| b.starts_with('/'))
            .unwrap_or(line.trim_end())
            .to_owned();
        let Some(conv) = self.selected.and_then(|i| self.convs.get_mut(i)) else {
            self.status = "no conversation selected: /open USER first".to_owned();
            self.input = line;
            return Vec::new();
        };
        let client_msg_id = new_client_msg_id();
        conv.pending.push(Pending {
            client_msg_id: client_msg_id.clone(),
            body: body.clone(),
            file: None,
            upload: None,
            failed: None,
        });
        self.scroll = 0;
        self.search = None;
        vec![Cmd::Send {
            conversation: conv.id,
            client_msg_id,
            body,
        }]
    }

    /// `/file PATH`: the file goes to the selected conversation once uploaded.
    fn send_file(&mut self, path: &str, line: &str) -> Vec<Cmd> {
        let Some(conv) = self.selected.and_then(|i| self.convs.get_mut(i)) else {
            self.status = "no conversation selected: /open USER first".to_owned();
            self.input = line.to_owned();
            return Vec::new();
        };
        let path = expand_home(path);
        let client_msg_id = new_client_msg_id();
        conv.pending.push(Pending {
            client_msg_id: client_msg_id.clone(),
            body: String::new(),
            file: Some(upload_name(&path)),
            upload: Some((0, 0)),
            failed: None,
        });
        self.scroll = 0;
        self.search = None;
        vec![Cmd::SendFile {
            conversation: conv.id,
            client_msg_id,
            path,
        }]
    }

    fn pending_mut(
        &mut self,
        conversation: ConversationId,
        client_msg_id: &ClientMsgId,
    ) -> Option<&mut Pending> {
        self.convs
            .iter_mut()
            .find(|c| c.id == conversation)?
            .pending
            .iter_mut()
            .find(|p| &p.client_msg_id == client_msg_id)
    }

    /// The index of `id` in the list, adding it (at the end) when new.
    fn conv_index(&mut self, id: ConversationId) -> usize {
        if let Some(i) = self.convs.iter().position(|c| c.id == id) {
            return i;
        }
        self.convs.push(Conv::new(id, self.my_id()));
        self.convs.len() - 1
    }

    /// Lookups for the users of `conv` whose names are not known yet.
    fn lookups_for(&self, users: impl IntoIterator<Item = UserId>) -> Vec<Cmd> {
        let mut cmds: Vec<Cmd> = Vec::new();
        for u in users {
            let cmd = Cmd::Lookup(u);
            if !self.names.contains_key(&u) && !cmds.contains(&cmd) {
                cmds.push(cmd);
            }
        }
        cmds
    }

    /// Stores a message; returns whether it was new.
    fn insert(&mut self, message: Message) -> bool {
        let index = self.conv_index(message.conversation);
        let me = self.my_id();
        let conv = &mut self.convs[index];
        if me == Some(message.sender) {
            conv.pending
                .retain(|p| p.client_msg_id != message.client_msg_id);
        }
        conv.messages.insert(message.seq, message).is_none()
    }

    pub fn handle_net(&mut self, event: NetEvent) -> Vec<Cmd> {
        match event {
            NetEvent::Connecting => {
                self.status = "connecting…".to_owned();
                Vec::new()
            }
            NetEvent::Connected(welcome) => {
                self.connected = true;
                self.names.insert(welcome.user_id, welcome.username.clone());
                self.status = format!(
                    "connected as {} (node {}) · {HELP}",
                    welcome.username, welcome.node_id
                );
                self.me = Some((welcome.user_id, welcome.username));
                let me = self.my_id();
                for c in &mut self.convs {
                    c.peer = c.peer.or_else(|| peer_of(c.id, me));
                }
                // Whatever the replay brings, read what each open conversation missed.
                self.catch_up_all()
            }
            NetEvent::Disconnected(reason) => {
                self.connected = false;
                self.status = format!("disconnected ({reason}); reconnecting…");
                Vec::new()
            }
            NetEvent::Fatal(error) => {
                self.connected = false;
                self.status = format!("{error} · Ctrl-C to leave");
                Vec::new()
            }
            NetEvent::Opened(info) => {
                for m in &info.members {
                    self.names.insert(m.user_id, m.username.clone());
                }
                let index = self.conv_index(info.conversation);
                let name = info
                    .members
                    .iter()
                    .find(|m| Some(m.user_id) != self.my_id())
                    .or(info.members.first())
                    .map(|m| m.username.clone());
                let asked = match &name {
                    Some(n) => {
                        let before = self.opening.len();
                        self.opening.retain(|o| o != n);
                        before != self.opening.len()
                    }
                    None => false,
                };
                if asked || self.selected.is_none() {
                    self.select(index);
                    self.focus = Focus::Input;
                }
                if let Some(n) = name {
                    self.status = format!("conversation with {n}");
                }
                let conv = &self.convs[index];
                vec![Cmd::History {
                    conversation: conv.id,
                    after: conv.last_seq(),
                }]
            }
            NetEvent::OpenFailed { username, error } => {
                self.opening.retain(|o| o != &username);
                self.status = format!("cannot open {username}: {error}");
                Vec::new()
            }
            NetEvent::Message(m) => {
                let conversation = m.conversation;
                let sender = m.sender;
                let new_conv = !self.convs.iter().any(|c| c.id == conversation);
                let fresh = self.insert(m);
                let index = self.conv_index(conversation);
                if fresh && self.selected != Some(index) && Some(sender) != self.my_id() {
                    self.convs[index].unread = self.convs[index].unread.saturating_add(1);
                }
                if self.selected.is_none() {
                    self.select(index);
                }
                let peer = self.convs[index].peer;
                let mut cmds = self.lookups_for([Some(sender), peer].into_iter().flatten());
                if new_conv {
                    // A conversation that shows up by a message: read what came before it.
                    cmds.push(Cmd::History {
                        conversation,
                        after: None,
                    });
                }
                cmds
            }
            NetEvent::History {
                conversation,
                messages,
            } => {
                let senders: Vec<UserId> = messages.iter().map(|m| m.sender).collect();
                for m in messages {
                    if m.conversation == conversation {
                        self.insert(m);
                    }
                }
                self.lookups_for(senders)
            }
            NetEvent::Acked { message } => {
                self.insert(message);
                Vec::new()
            }
            NetEvent::SendFailed {
                conversation,
                client_msg_id,
                error,
            } => {
                let index = self.conv_index(conversation);
                for p in &mut self.convs[index].pending {
                    if p.client_msg_id == client_msg_id {
                        p.failed = Some(error.to_string());
                        p.upload = None;
                    }
                }
                self.status = format!("not sent: {error}");
                Vec::new()
            }
            NetEvent::UploadProgress {
                conversation,
                client_msg_id,
                done,
                total,
            } => {
                if let Some(p) = self.pending_mut(conversation, &client_msg_id) {
                    if p.upload.is_some() {
                        p.upload = Some((done, total));
                    }
                }
                Vec::new()
            }
            NetEvent::Uploaded {
                conversation,
                client_msg_id,
            } => {
                if let Some(p) = self.pending_mut(conversation, &client_msg_id) {
                    p.upload = None;
                }
                Vec::new()
            }
            NetEvent::SearchResults { query, result } => {
                let me = self.my_id();
                let Some(search) = self.search.as_mut().filter(|s| s.query == query) else {
                    // An answer to a search since replaced or closed.
                    return Vec::new();
                };
                search.state = match result {
                    Ok(page) => SearchState::Done(page),
                    Err(e) => SearchState::Failed(e.to_string()),
                };
                let users: Vec<UserId> = match &search.state {
                    SearchState::Done(page) => page
                        .hits
                        .iter()
                        .flat_map(|h| [Some(h.sender), peer_of(h.conversation, me)])
                        .flatten()
                        .collect(),
                    _ => Vec::new(),
                };
                self.lookups_for(users)
            }
            NetEvent::Name(user, name) => {
                self.names.insert(user, name);
                Vec::new()
            }
            NetEvent::Resync => {
                let mut cmds = self.catch_up_all();
                cmds.push(Cmd::ListConversations);
                cmds
            }
            NetEvent::Conversations(list) => {
                let mut cmds = Vec::new();
                for s in list {
                    let known = self.convs.iter().any(|c| c.id == s.conversation);
                    if known || s.last_ts_ms >= self.started_ms {
                        let index = self.conv_index(s.conversation);
                        let conv = &self.convs[index];
                        if conv.last_seq() < Some(s.last_seq) {
                            cmds.push(Cmd::History {
                                conversation: conv.id,
                                after: conv.last_seq(),
                            });
                        }
                        cmds.extend(self.lookups_for(self.convs[index].peer));
                    }
                }
                cmds
            }
            NetEvent::Problem(text) => {
                self.status = text;
                Vec::new()
            }
        }
    }

    fn catch_up_all(&self) -> Vec<Cmd> {
        self.convs
            .iter()
            .map(|c| Cmd::History {
                conversation: c.id,
                after: c.last_seq(),
            })
            .collect()
    }
}

/// `~/x` as `$HOME/x`; any other path as typed.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) if !home.is_empty() => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chat_types::{EventSeq, Limits, NodeId, UserSummary};
    use crossterm::event::KeyEventKind;

    use super::*;

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn type_line(app: &mut App, text: &str) -> Vec<Cmd> {
        for c in text.chars() {
            assert!(app.handle_key(key(KeyCode::Char(c))).is_empty());
        }
        app.handle_key(key(KeyCode::Enter))
    }

    fn connected() -> App {
        let mut app = App::new(0);
        app.handle_net(NetEvent::Connected(Welcome {
            version: 1,
            user_id: ALICE,
            username: "alice".into(),
            node_id: NodeId(9),
            limits: Limits::default(),
            heartbeat_ms: 30_000,
            event_head: EventSeq(0),
            acked_event_seq: EventSeq(0),
        }));
        app
    }

    fn dm() -> ConversationId {
        ConversationId::direct(ALICE, BOB)
    }

    fn msg(seq: u64, sender: UserId, cmid: &str, body: &str) -> Message {
        Message {
            conversation: dm(),
            seq: Seq(seq),
            sender,
            client_msg_id: ClientMsgId::new(cmid).unwrap(),
            body: body.into(),
            ts_ms: 1,
            refers: None,
            attachments: Vec::new(),
        }
    }

    fn opened(app: &mut App) -> Vec<Cmd> {
        assert_eq!(type_line(app, "/open Bob"), vec![Cmd::Open("bob".into())]);
        app.handle_net(NetEvent::Opened(ConversationInfo {
            conversation: dm(),
            members: vec![
                UserSummary {
                    user_id: ALICE,
                    username: "alice".into(),
                },
                UserSummary {
                    user_id: BOB,
                    username: "bob".into(),
                },
            ],
            head: Seq(0),
        }))
    }

    #[test]
    fn open_selects_the_conversation_and_loads_its_history() {
        let mut app = connected();
        let cmds = opened(&mut app);
        assert_eq!(
            cmds,
            vec![Cmd::History {
                conversation: dm(),
                after: None
            }]
        );
        assert_eq!(app.selected, Some(0));
        assert_eq!(app.title(&app.convs[0]), "bob");
    }

    #[test]
    fn a_send_is_pending_until_acked_and_shows_once() {
        let mut app = connected();
        opened(&mut app);
        let cmds = type_line(&mut app, "hello bob");
        let [Cmd::Send {
            conversation,
            client_msg_id,
            body,
        }] = cmds.as_slice()
        else {
            panic!("expected one send, got {cmds:?}");
        };
        assert_eq!((*conversation, body.as_str()), (dm(), "hello bob"));
        assert_eq!(app.convs[0].pending.len(), 1);
        assert!(app.input.is_empty());
        let mut stored = msg(1, ALICE, client_msg_id.as_str(), "hello bob");
        app.handle_net(NetEvent::Acked {
            message: stored.clone(),
        });
        assert!(app.convs[0].pending.is_empty());
        // The replay after a reconnect brings the same message again.
        stored.ts_ms = 2;
        app.handle_net(NetEvent::Message(stored));
        assert_eq!(app.convs[0].messages.len(), 1);
    }

    #[test]
    fn a_refused_send_stays_visible_as_failed() {
        let mut app = connected();
        opened(&mut app);
        let cmds = type_line(&mut app, "x");
        let Some(Cmd::Send { client_msg_id, .. }) = cmds.first() else {
            panic!("no send");
        };
        app.handle_net(NetEvent::SendFailed {
            conversation: dm(),
            client_msg_id: client_msg_id.clone(),
            error: CliError::new("forbidden", "blocked"),
        });
        assert!(app.convs[0].pending[0].failed.is_some());
        assert!(app.status.contains("forbidden"));
    }

    #[test]
    fn an_incoming_message_adds_its_conversation_and_asks_for_names() {
        let mut app = connected();
        let carol = UserId(3);
        let conv = ConversationId::direct(ALICE, carol);
        let mut m = msg(4, carol, "c", "hi");
        m.conversation = conv;
        let cmds = app.handle_net(NetEvent::Message(m.clone()));
        assert_eq!(
            cmds,
            vec![
                Cmd::Lookup(carol),
                Cmd::History {
                    conversation: conv,
                    after: None
                }
            ]
        );
        assert!(app.handle_net(NetEvent::Message(m)).len() == 1);
        assert_eq!(app.convs.len(), 1);
        assert_eq!(app.selected, Some(0));
        // A second conversation's message counts as unread while another is shown.
        app.handle_net(NetEvent::Message(msg(1, BOB, "b", "yo")));
        assert_eq!(app.convs[1].unread, 1);
        app.handle_key(key(KeyCode::Down));
        assert_eq!((app.selected, app.convs[1].unread), (Some(1), 0));
        app.handle_net(NetEvent::Name(carol, "carol".into()));
        assert_eq!(app.title(&app.convs[0]), "carol");
    }

    #[test]
    fn reconnecting_catches_up_every_conversation_after_its_last_seq() {
        let mut app = connected();
        opened(&mut app);
        app.handle_net(NetEvent::Message(msg(3, BOB, "b", "yo")));
        app.handle_net(NetEvent::Disconnected("gone".into()));
        assert!(!app.connected);
        let cmds = app.handle_net(NetEvent::Connected(Welcome {
            version: 1,
            user_id: ALICE,
            username: "alice".into(),
            node_id: NodeId(9),
            limits: Limits::default(),
            heartbeat_ms: 30_000,
            event_head: EventSeq(5),
            acked_event_seq: EventSeq(0),
        }));
        assert_eq!(
            cmds,
            vec![Cmd::History {
                conversation: dm(),
                after: Some(Seq(3))
            }]
        );
    }

    #[test]
    fn commands_quit_and_bad_input_only_explain() {
        let mut app = connected();
        assert!(type_line(&mut app, "hello").is_empty());
        assert!(app.status.contains("/open"));
        assert_eq!(app.input, "hello", "the text is kept until it can be sent");
        app.handle_key(key(KeyCode::Esc));
        assert!(type_line(&mut app, "/open no way").is_empty());
        assert!(type_line(&mut app, "/open x!").is_empty());
        assert!(type_line(&mut app, "/frobnicate").is_empty());
        assert!(!app.quit);
        type_line(&mut app, "/quit");
        assert!(app.quit);
        let mut app = connected();
        let mut ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        ctrl_c.kind = KeyEventKind::Press;
        app.handle_key(ctrl_c);
        assert!(app.quit);
    }

    #[test]
    fn tab_switches_panes_and_keys_never_panic_on_an_empty_list() {
        let mut app = App::new(0);
        assert_eq!(app.focus, Focus::Input);
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.focus, Focus::List);
        for code in [
            KeyCode::Up,
            KeyCode::Down,
            KeyCode::Char('j'),
            KeyCode::PageUp,
            KeyCode::PageDown,
            KeyCode::Enter,
            KeyCode::Backspace,
        ] {
            app.handle_key(key(code));
        }
        assert_eq!(app.selected, None);
        assert_eq!(app.focus, Focus::Input);
    }

    #[test]
    fn a_file_is_pending_while_it_uploads_then_shows_with_its_attachment() {
        let mut app = connected();
        let cmds = type_line(&mut app, "/file x.png");
        assert!(cmds.is_empty(), "no conversation selected yet");
        app.handle_key(key(KeyCode::Esc));
        opened(&mut app);
        let cmds = type_line(&mut app, "/file /tmp/my pics/cat one.png");
        let [Cmd::SendFile {
            conversation,
            client_msg_id,
            path,
        }] = cmds.as_slice()
        else {
            panic!("expected one file send, got {cmds:?}");
        };
        assert_eq!(*conversation, dm());
        assert_eq!(path, &PathBuf::from("/tmp/my pics/cat one.png"));
        let pending = &app.convs[0].pending[0];
        assert_eq!(pending.file.as_deref(), Some("cat one.png"));
        assert_eq!(pending.upload, Some((0, 0)));
        app.handle_net(NetEvent::UploadProgress {
            conversation: dm(),
            client_msg_id: client_msg_id.clone(),
            done: 50,
            total: 100,
        });
        assert_eq!(app.convs[0].pending[0].upload, Some((50, 100)));
        app.handle_net(NetEvent::Uploaded {
            conversation: dm(),
            client_msg_id: client_msg_id.clone(),
        });
        assert_eq!(app.convs[0].pending[0].upload, None);
        let mut stored = msg(1, ALICE, client_msg_id.as_str(), "");
        stored.attachments.push(chat_types::Attachment {
            id: chat_types::MediaId::from_random([1; 16]),
            mime: "image/png".into(),
            kind: chat_types::MediaKind::Image,
            size: 10,
            name: "cat one.png".into(),
            width: None,
            height: None,
            thumbnails: Vec::new(),
        });
        app.handle_net(NetEvent::Acked { message: stored });
        assert!(app.convs[0].pending.is_empty());
        assert_eq!(app.convs[0].messages[&Seq(1)].attachments.len(), 1);
        // A failed upload stays visible as not sent.
        let cmds = type_line(&mut app, "/f ~/nope.bin");
        let [Cmd::SendFile { client_msg_id, .. }] = cmds.as_slice() else {
            panic!("expected one file send, got {cmds:?}");
        };
        app.handle_net(NetEvent::SendFailed {
            conversation: dm(),
            client_msg_id: client_msg_id.clone(),
            error: CliError::new("io", "cannot read ~/nope.bin"),
        });
        let pending = &app.convs[0].pending[0];
        assert!(pending.failed.is_some() && pending.upload.is_none());
        assert!(type_line(&mut app, "/file").is_empty());
        assert!(app.status.contains("usage"));
    }

    #[test]
    fn search_results_show_until_esc_and_stale_answers_are_dropped() {
        let mut app = connected();
        assert_eq!(
            type_line(&mut app, "/search 北京 trip"),
            vec![Cmd::Search("北京 trip".into())]
        );
        assert_eq!(
            app.search.as_ref().map(|s| &s.state),
            Some(&SearchState::Searching)
        );
        let carol = UserId(3);
        let page = SearchPage {
            hits: vec![MessageHit {
                conversation: ConversationId::direct(ALICE, carol),
                seq: Seq(2),
                sender: carol,
                ts_ms: 1,
                body: "我们明天去北京开会".into(),
                snippet: "我们明天去北京开会".into(),
                highlights: vec![(5, 7)],
            }],
            partial: false,
            more: false,
        };
        // An answer to another query changes nothing.
        let cmds = app.handle_net(NetEvent::SearchResults {
            query: "old".into(),
            result: Ok(page.clone()),
        });
        assert!(cmds.is_empty());
        assert_eq!(
            app.search.as_ref().map(|s| &s.state),
            Some(&SearchState::Searching)
        );
        let cmds = app.handle_net(NetEvent::SearchResults {
            query: "北京 trip".into(),
            result: Ok(page.clone()),
        });
        assert_eq!(cmds, vec![Cmd::Lookup(carol)]);
        assert_eq!(
            app.search.as_ref().map(|s| &s.state),
            Some(&SearchState::Done(page))
        );
        // Esc clears a typed line first, then closes the results.
        app.handle_key(key(KeyCode::Char('x')));
        app.handle_key(key(KeyCode::Esc));
        assert!(app.search.is_some() && app.input.is_empty());
        app.handle_key(key(KeyCode::Esc));
        assert!(app.search.is_none());
        assert!(type_line(&mut app, "/search").is_empty());
        assert!(app.search.is_none());
    }

    #[test]
    fn a_double_slash_sends_a_literal_slash() {
        let mut app = connected();
        opened(&mut app);
        let cmds = type_line(&mut app, "//shrug");
        assert!(matches!(cmds.as_slice(), [Cmd::Send { body, .. }] if body == "/shrug"));
    }
}
