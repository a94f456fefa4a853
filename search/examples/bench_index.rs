//! Message search benchmark: builds a [`MessageIndex`] of N synthetic chat messages the way
//! the node's indexer does (batches of 2,000 `IndexOp::Put`, one commit each), then times
//! queries of several kinds for a typical reader (~50 conversations) and for a reader with
//! 500 groups. It prints its figures; it asserts nothing about time.
//!
//! ```text
//! cargo run --release -p chat-search --example bench_index -- [options]
//!   --messages N    messages to index (default 1000000; env BENCH_MESSAGES)
//!   --dir PATH      where the index lives (default /var/tmp/chat-bench/search-<N>)
//!   --reuse         keep an index already built there with the same parameters
//!   --queries Q     queries per round (default 2000)
//!   --rounds R      measured rounds of Q queries (default 3); figures are the median round
//!   --warmup W      unmeasured queries before the first round (default 200)
//!   --limit L       hits per page (default 20, the REST default)
//!   --seed S        generator seed (default 1)
//! ```
//!
//! The corpus: ~3,000 English words drawn with Zipf weights (s = 1) plus 3% long-tail tokens
//! (numbers, made-up names), ~7% Chinese and ~3% Japanese messages, 5-40 words per message
//! (short ones more likely), 6,000 direct and 4,000 group conversations of Zipf-distributed
//! activity (s = 0.9), timestamps rising ~30 s per message. Everything comes from one seeded
//! generator, so a rerun builds the same index and asks the same queries.

use std::collections::HashSet;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chat_search::{IndexOp, IndexedMessage, MessageIndex, SearchQuery};
use chat_types::ids::{ConversationId, GroupId, Seq, UserId};

type Res<T> = Result<T, Box<dyn Error>>;

const BATCH: usize = 2_000;
const USERS: u64 = 20_000;
const DIRECTS: usize = 6_000;
const GROUPS: u64 = 4_000;
/// Users 1..=100 read ~50 conversations each; users 101..=110 read 500 groups each.
const TYPICAL_READERS: u64 = 100;
const TYPICAL_DIRECTS: usize = 35;
const TYPICAL_GROUPS: usize = 15;
const HEAVY_READERS: u64 = 10;
const HEAVY_DIRECTS: usize = 20;
const HEAVY_GROUPS: usize = 500;
const START_TS_MS: u64 = 1_704_067_200_000;
/// Bumped whenever the generator changes, so `--reuse` never keeps a different corpus.
const CORPUS_VERSION: u32 = 1;

const ENGLISH: &str = include_str!("bench_index_words.txt");

/// Common Chinese words, roughly most frequent first.
const CHINESE: &[&str] = &[
    "我们",
    "你们",
    "他们",
    "今天",
    "明天",
    "昨天",
    "现在",
    "时候",
    "什么",
    "怎么",
    "没有",
    "可以",
    "知道",
    "觉得",
    "一下",
    "一起",
    "已经",
    "还是",
    "但是",
    "因为",
    "所以",
    "如果",
    "这个",
    "那个",
    "问题",
    "工作",
    "时间",
    "事情",
    "大家",
    "朋友",
    "公司",
    "老师",
    "学生",
    "同事",
    "老板",
    "客户",
    "开会",
    "会议",
    "项目",
    "文件",
    "报告",
    "邮件",
    "电话",
    "消息",
    "微信",
    "手机",
    "电脑",
    "网络",
    "服务",
    "系统",
    "数据",
    "测试",
    "上线",
    "发布",
    "修改",
    "更新",
    "下载",
    "上传",
    "图片",
    "视频",
    "吃饭",
    "午饭",
    "晚饭",
    "早饭",
    "咖啡",
    "喝茶",
    "米饭",
    "面条",
    "饺子",
    "火锅",
    "水果",
    "蛋糕",
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "成都",
    "南京",
    "武汉",
    "西安",
    "香港",
    "台北",
    "东京",
    "机场",
    "火车",
    "地铁",
    "酒店",
    "医院",
    "学校",
    "超市",
    "银行",
    "商店",
    "餐厅",
    "公园",
    "办公",
    "天气",
    "下雨",
    "下雪",
    "太阳",
    "周末",
    "假期",
    "旅游",
    "出差",
    "回家",
    "上班",
    "下班",
    "加班",
    "休息",
    "睡觉",
    "起床",
    "运动",
    "跑步",
    "游泳",
    "电影",
    "音乐",
    "唱歌",
    "游戏",
    "比赛",
    "足球",
    "生日",
    "快乐",
    "谢谢",
    "不好",
    "意思",
    "没事",
    "好的",
    "收到",
    "马上",
    "等等",
    "注意",
    "小心",
    "方便",
    "需要",
    "希望",
    "喜欢",
    "准备",
    "安排",
    "确认",
    "检查",
    "讨论",
    "决定",
    "计划",
    "结果",
    "价格",
    "便宜",
    "质量",
    "快递",
    "包裹",
    "地址",
    "付款",
    "发票",
    "合同",
    "预算",
    "费用",
    "工资",
    "孩子",
    "父母",
    "妈妈",
    "爸爸",
    "哥哥",
    "姐姐",
    "弟弟",
    "妹妹",
    "爷爷",
    "奶奶",
    "老婆",
    "老公",
    "感冒",
    "发烧",
    "医生",
    "身体",
    "健康",
    "辛苦",
    "加油",
    "厉害",
    "漂亮",
    "可爱",
    "有意思",
    "不错",
    "非常",
    "特别",
    "一定",
    "应该",
    "可能",
    "真的",
    "其实",
    "当然",
    "终于",
    "突然",
    "一直",
    "刚才",
];

/// Japanese words and particles; particles are frequent, as in real text.
const JAPANESE: &[&str] = &[
    "は",
    "を",
    "に",
    "が",
    "で",
    "の",
    "と",
    "も",
    "です",
    "ます",
    "でした",
    "ました",
    "けど",
    "今日",
    "明日",
    "昨日",
    "時間",
    "会議",
    "仕事",
    "資料",
    "確認",
    "連絡",
    "予定",
    "変更",
    "お願い",
    "よろしく",
    "ありがとう",
    "すみません",
    "大丈夫",
    "了解",
    "東京",
    "大阪",
    "京都",
    "横浜",
    "駅",
    "電車",
    "新幹線",
    "空港",
    "ホテル",
    "ランチ",
    "コーヒー",
    "ラーメン",
    "寿司",
    "お寿司",
    "天気",
    "週末",
    "旅行",
    "出張",
    "会社",
    "部長",
    "課長",
    "先輩",
    "後輩",
    "友達",
    "家族",
    "子供",
    "映画",
    "音楽",
    "写真",
    "動画",
    "メール",
    "電話",
    "サーバー",
    "テスト",
    "リリース",
    "バグ",
    "修正",
    "対応",
    "準備",
    "開始",
    "終了",
    "参加",
    "相談",
    "問題",
    "結果",
    "報告",
    "来週",
    "今週",
    "先週",
    "行きます",
    "来ます",
    "見ます",
    "食べます",
    "飲みます",
    "送ります",
    "思います",
    "分かりました",
];

const SYLLABLES: &[&str] = &[
    "ka", "ri", "to", "ma", "shi", "na", "el", "an", "de", "lo", "vi", "ra", "son", "ber", "mi",
    "ko", "ta", "le", "ne", "sa", "jo", "han", "li", "ed", "win", "ton", "ley", "ro", "fa", "gu",
    "zu", "pe", "ar", "is", "mo", "ven", "dra", "qui", "bo", "lin",
];

// ---------------------------------------------------------------------------------------
// Randomness (no dependency: SplitMix64).

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in lo..=hi.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Ranks 0..n with weight 1 / (rank + 1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

// ---------------------------------------------------------------------------------------
// The synthetic world: conversations, readers, messages.

struct Reader {
    user: UserId,
    groups: Vec<ConversationId>,
    conversations: usize,
}

struct World {
    conversations: Vec<ConversationId>,
    /// Activity rank -> index into `conversations`.
    by_activity: Vec<usize>,
    activity: Zipf,
    typical: Vec<Reader>,
    heavy: Vec<Reader>,
}

fn distinct(rng: &mut Rng, count: usize, lo: u64, hi: u64) -> Vec<u64> {
    let mut seen = HashSet::new();
    while seen.len() < count {
        seen.insert(lo + rng.next_u64() % (hi - lo + 1));
    }
    let mut v: Vec<u64> = seen.into_iter().collect();
    v.sort_unstable();
    v
}

impl World {
    fn new(rng: &mut Rng) -> World {
        let mut pairs: HashSet<ConversationId> = HashSet::new();
        let mut conversations = Vec::new();
        let mut readers = Vec::new();
        let first_other = TYPICAL_READERS + HEAVY_READERS + 1;
        for user in 1..=TYPICAL_READERS + HEAVY_READERS {
            let (directs, groups) = if user <= TYPICAL_READERS {
                (TYPICAL_DIRECTS, TYPICAL_GROUPS)
            } else {
                (HEAVY_DIRECTS, HEAVY_GROUPS)
            };
            for other in distinct(rng, directs, first_other, USERS) {
                let c = ConversationId::direct(UserId(user), UserId(other));
                if pairs.insert(c) {
                    conversations.push(c);
                }
            }
            let groups: Vec<ConversationId> = distinct(rng, groups, 1, GROUPS)
                .into_iter()
                .map(|g| ConversationId::group(GroupId(g)))
                .collect();
            readers.push(Reader {
                user: UserId(user),
                conversations: directs + groups.len(),
                groups,
            });
        }
        while conversations.len() < DIRECTS {
            let a = first_other + rng.next_u64() % (USERS - first_other + 1);
            let b = first_other + rng.next_u64() % (USERS - first_other + 1);
            let c = ConversationId::direct(UserId(a), UserId(b));
            if a != b && pairs.insert(c) {
                conversations.push(c);
            }
        }
        conversations.extend((1..=GROUPS).map(|g| ConversationId::group(GroupId(g))));
        let mut by_activity: Vec<usize> = (0..conversations.len()).collect();
        rng.shuffle(&mut by_activity);
        let heavy = readers.split_off(TYPICAL_READERS as usize);
        World {
            activity: Zipf::new(conversations.len(), 0.9),
            conversations,
            by_activity,
            typical: readers,
            heavy,
        }
    }
}

struct Vocabulary {
    english: Vec<&'static str>,
    english_zipf: Zipf,
    chinese_zipf: Zipf,
    japanese_zipf: Zipf,
}

impl Vocabulary {
    fn new() -> Vocabulary {
        let mut seen = HashSet::new();
        let english: Vec<&'static str> = ENGLISH
            .split_whitespace()
            .filter(|w| seen.insert(*w))
            .collect();
        Vocabulary {
            english_zipf: Zipf::new(english.len(), 1.0),
            english,
            chinese_zipf: Zipf::new(CHINESE.len(), 1.0),
            japanese_zipf: Zipf::new(JAPANESE.len(), 0.8),
        }
    }
}

struct Generator<'a> {
    rng: Rng,
    world: &'a World,
    vocab: &'a Vocabulary,
    seqs: Vec<u64>,
    ts_ms: u64,
    body_bytes: u64,
}

impl<'a> Generator<'a> {
    fn new(seed: u64, world: &'a World, vocab: &'a Vocabulary) -> Self {
        Generator {
            rng: Rng(seed),
            world,
            vocab,
            seqs: vec![0; world.conversations.len()],
            ts_ms: START_TS_MS,
            body_bytes: 0,
        }
    }

    /// 5-40, short messages more likely (mean ~17).
    fn length(&mut self) -> usize {
        let u = self.rng.unit();
        5 + (35.0 * u * u).round() as usize
    }

    fn tail_token(&mut self) -> String {
        if self.rng.below(2) == 0 {
            return self.rng.below(100_000).to_string();
        }
        let mut name = String::new();
        for _ in 0..self.rng.between(2, 3) {
            name.push_str(SYLLABLES[self.rng.below(SYLLABLES.len())]);
        }
        name
    }

    fn english(&mut self) -> String {
        let n = self.length();
        let mut body = String::new();
        for i in 0..n {
            let word = if self.rng.below(100) < 3 {
                self.tail_token()
            } else {
                self.vocab.english[self.vocab.english_zipf.sample(&mut self.rng)].to_string()
            };
            if i > 0 {
                body.push_str(if self.rng.below(12) == 0 { ", " } else { " " });
            }
            if i == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    body.extend(first.to_uppercase());
                    body.push_str(chars.as_str());
                }
            } else {
                body.push_str(&word);
            }
        }
        body.push_str(["", "", ".", "?", "!", " :)", " 🙂"][self.rng.below(7)]);
        body
    }

    fn cjk(&mut self, words: &[&str], zipf: &Zipf) -> String {
        let n = self.length();
        let mut body = String::new();
        for i in 0..n {
            if i > 0 && self.rng.below(7) == 0 {
                body.push('，');
            }
            if self.rng.below(25) == 0 {
                // Chat in Chinese or Japanese often carries an English word or a number.
                let w = self.vocab.english[self.rng.below(300)];
                body.push_str(w);
            } else {
                let rank = zipf.sample(&mut self.rng);
                body.push_str(words[rank]);
            }
        }
        body.push_str(["。", "？", "！", ""][self.rng.below(4)]);
        body
    }

    fn next_message(&mut self) -> IndexedMessage {
        let rank = self.world.activity.sample(&mut self.rng);
        let at = self.world.by_activity[rank];
        let conversation = self.world.conversations[at];
        self.seqs[at] += 1;
        self.ts_ms += self.rng.below(60_000) as u64;
        let sender = match conversation {
            ConversationId::Direct { low, high } => {
                if self.rng.below(2) == 0 {
                    low
                } else {
                    high
                }
            }
            ConversationId::Group { .. } => UserId(1 + self.rng.next_u64() % USERS),
        };
        let roll = self.rng.below(100);
        let vocab = self.vocab;
        let body = if roll < 7 {
            self.cjk(CHINESE, &vocab.chinese_zipf)
        } else if roll < 10 {
            self.cjk(JAPANESE, &vocab.japanese_zipf)
        } else {
            self.english()
        };
        self.body_bytes += body.len() as u64;
        IndexedMessage {
            conversation,
            seq: Seq(self.seqs[at]),
            sender,
            ts_ms: self.ts_ms,
            body,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Process figures from /proc.

/// User + system CPU seconds of this process (all threads, tantivy's merge threads too).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After "(comm)": state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

/// This thread's time on a CPU and time waiting in the run queue, from
/// /proc/thread-self/schedstat (nanoseconds). On a shared machine the difference between a
/// query's latency and its CPU time is mostly the wait for a CPU.
fn thread_sched() -> (Duration, Duration) {
    // The kernel brings a running thread's counters up to date only at scheduler events; a
    // yield is one (and costs ~1 us when nothing else waits).
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    let on_cpu = fields.next().unwrap_or(0);
    let waiting = fields.next().unwrap_or(0);
    (Duration::from_nanos(on_cpu), Duration::from_nanos(waiting))
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Segments listed in tantivy's meta.json.
fn segment_count(index_dir: &Path) -> usize {
    std::fs::read_to_string(index_dir.join("meta.json"))
        .map(|m| m.matches("\"segment_id\"").count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Statistics.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Clone, Copy)]
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    cpu_p50: f64,
    cpu_p99: f64,
    /// Share of the total latency spent waiting for a CPU (run queue).
    waiting: f64,
    mean_hits: f64,
    full_pages: f64,
}

fn summarize(samples: &[&Sample]) -> Summary {
    let mut d: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    d.sort_unstable();
    let mut cpu: Vec<Duration> = samples.iter().map(|s| s.cpu).collect();
    cpu.sort_unstable();
    let n = samples.len().max(1) as f64;
    let total: f64 = samples.iter().map(|s| s.latency.as_secs_f64()).sum();
    let waited: f64 = samples.iter().map(|s| s.waiting.as_secs_f64()).sum();
    Summary {
        n: samples.len(),
        p50: ms(pct(&d, 50.0)),
        p90: ms(pct(&d, 90.0)),
        p99: ms(pct(&d, 99.0)),
        max: ms(d.last().copied().unwrap_or_default()),
        cpu_p50: ms(pct(&cpu, 50.0)),
        cpu_p99: ms(pct(&cpu, 99.0)),
        waiting: if total > 0.0 {
            waited / total * 100.0
        } else {
            0.0
        },
        mean_hits: samples.iter().map(|s| s.hits as f64).sum::<f64>() / n,
        full_pages: samples.iter().filter(|s| s.more).count() as f64 / n * 100.0,
    }
}

// ---------------------------------------------------------------------------------------
// Queries.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Common,
    Rare,
    TwoWords,
    Cjk,
    Prefix,
}

const KINDS: [Kind; 5] = [
    Kind::Common,
    Kind::Rare,
    Kind::TwoWords,
    Kind::Cjk,
    Kind::Prefix,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Common => "common word",
            Kind::Rare => "rare word",
            Kind::TwoWords => "two words",
            Kind::Cjk => "CJK word",
            Kind::Prefix => "prefix (as typed)",
        }
    }
}

const READERS: [&str; 2] = ["typical (~50 conv.)", "500 groups"];

struct Query {
    kind: Kind,
    heavy: bool,
    q: SearchQuery,
}

/// An English word of rank lo..hi (0-based) without an apostrophe.
fn word_in(rng: &mut Rng, vocab: &Vocabulary, lo: usize, hi: usize) -> &'static str {
    let hi = hi.min(vocab.english.len());
    loop {
        let w = vocab.english[rng.between(lo, hi - 1)];
        if w.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return w;
        }
    }
}

fn make_queries(
    seed: u64,
    count: usize,
    world: &World,
    vocab: &Vocabulary,
    limit: usize,
) -> Vec<Query> {
    let mut rng = Rng(seed);
    let cjk_pairs: Vec<&str> = CHINESE
        .iter()
        .chain(JAPANESE)
        .copied()
        .filter(|w| w.chars().count() == 2)
        .collect();
    let cjk_zipf = Zipf::new(cjk_pairs.len(), 1.0);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let kind = KINDS[i % KINDS.len()];
        let heavy = (i / KINDS.len()) % 2 == 1;
        // A trailing space ends a word: no prefix expansion of the last word.
        let text = match kind {
            Kind::Common => format!("{} ", word_in(&mut rng, vocab, 0, 50)),
            Kind::Rare => format!("{} ", word_in(&mut rng, vocab, 1_500, usize::MAX)),
            Kind::TwoWords => {
                let a = word_in(&mut rng, vocab, 20, 500);
                let mut b = word_in(&mut rng, vocab, 20, 500);
                while b == a {
                    b = word_in(&mut rng, vocab, 20, 500);
                }
                format!("{a} {b} ")
            }
            Kind::Cjk => cjk_pairs[cjk_zipf.sample(&mut rng)].to_string(),
            Kind::Prefix => loop {
                let w = word_in(&mut rng, vocab, 0, 300);
                if w.len() >= 4 {
                    break w[..rng.between(2, 4)].to_string();
                }
            },
        };
        let readers = if heavy { &world.heavy } else { &world.typical };
        let reader = &readers[rng.below(readers.len())];
        let mut q = SearchQuery::new(text, reader.user);
        q.groups = reader.groups.clone();
        q.limit = limit;
        out.push(Query { kind, heavy, q });
    }
    rng.shuffle(&mut out);
    out
}

struct Sample {
    kind: Kind,
    heavy: bool,
    latency: Duration,
    /// The searching thread's own CPU time during the query.
    cpu: Duration,
    /// Time the thread spent runnable but waiting for a CPU.
    waiting: Duration,
    hits: usize,
    more: bool,
}

type Samples = Vec<Sample>;

fn run_queries(index: &MessageIndex, queries: &[Query]) -> Res<Samples> {
    let mut out = Vec::with_capacity(queries.len());
    for query in queries {
        let (cpu0, wait0) = thread_sched();
        let t = Instant::now();
        let page = index.search(&query.q)?;
        let latency = t.elapsed();
        let (cpu1, wait1) = thread_sched();
        out.push(Sample {
            kind: query.kind,
            heavy: query.heavy,
            latency,
            cpu: cpu1.saturating_sub(cpu0).min(latency),
            waiting: wait1.saturating_sub(wait0).min(latency),
            hits: page.hits.len(),
            more: page.next.is_some(),
        });
    }
    Ok(out)
}

fn select(samples: &Samples, kind: Option<Kind>, heavy: Option<bool>) -> Summary {
    let picked: Vec<&Sample> = samples
        .iter()
        .filter(|s| match (kind, heavy) {
            (Some(k), _) if s.kind != k => false,
            (_, Some(h)) if s.heavy != h => false,
            _ => true,
        })
        .collect();
    summarize(&picked)
}

// ---------------------------------------------------------------------------------------

struct Options {
    messages: usize,
    dir: Option<PathBuf>,
    reuse: bool,
    queries: usize,
    rounds: usize,
    warmup: usize,
    limit: usize,
    seed: u64,
}

fn parse_options() -> Res<Options> {
    let mut o = Options {
        messages: match std::env::var("BENCH_MESSAGES") {
            Ok(v) => v.replace('_', "").parse()?,
            Err(_) => 1_000_000,
        },
        dir: None,
        reuse: false,
        queries: 2_000,
        rounds: 3,
        warmup: 200,
        limit: 20,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Res<String> {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value").into())
        };
        match arg.as_str() {
            "--messages" => o.messages = value()?.replace('_', "").parse()?,
            "--dir" => o.dir = Some(PathBuf::from(value()?)),
            "--reuse" => o.reuse = true,
            "--queries" => o.queries = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse::<usize>()?.max(1),
            "--warmup" => o.warmup = value()?.parse()?,
            "--limit" => o.limit = value()?.parse()?,
            "--seed" => o.seed = value()?.parse()?,
            "-h" | "--help" => {
                println!("see the comment at the top of search/examples/bench_index.rs");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

fn build(o: &Options, index_dir: &Path, world: &World, vocab: &Vocabulary) -> Res<()> {
    let index = MessageIndex::open(index_dir)?;
    let mut generator = Generator::new(o.seed.wrapping_mul(7919), world, vocab);
    let mut batch_times = Vec::new();
    let mut apply_total = Duration::ZERO;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut next_report = 100_000;
    println!(
        "building: {} messages in batches of {BATCH} (one commit each)",
        o.messages
    );
    while done < o.messages {
        let n = BATCH.min(o.messages - done);
        let ops: Vec<IndexOp> = (0..n)
            .map(|_| IndexOp::Put(generator.next_message()))
            .collect();
        done += n;
        let t = Instant::now();
        index.apply(ops, done as u64)?;
        let took = t.elapsed();
        apply_total += took;
        batch_times.push(took);
        if done >= next_report || done == o.messages {
            next_report += 100_000;
            println!(
                "  {done:>9} messages  {:>7.0} msg/s so far (apply only)  segments {:>3}  {:.0} MiB",
                done as f64 / apply_total.as_secs_f64(),
                segment_count(index_dir),
                dir_bytes(index_dir) as f64 / 1048576.0
            );
        }
    }
    let wall = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    // Let tantivy's background merges finish (the node keeps running, so they would):
    // wait until the process is idle for two consecutive seconds, at most five minutes.
    let settle0 = Instant::now();
    let mut idle = 0;
    let mut last_cpu = cpu_seconds();
    while idle < 2 && settle0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_seconds();
        idle = if now - last_cpu < 0.05 { idle + 1 } else { 0 };
        last_cpu = now;
    }
    // The last two idle seconds only detected the end.
    let settle = settle0.elapsed().saturating_sub(Duration::from_secs(2));
    let settle_cpu = cpu_seconds() - cpu0 - cpu;
    batch_times.sort_unstable();
    let avg_body = generator.body_bytes as f64 / o.messages.max(1) as f64;
    println!();
    println!("## Indexing ({} messages)", o.messages);
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| throughput, apply() only | {:.0} msg/s |",
        o.messages as f64 / apply_total.as_secs_f64()
    );
    println!(
        "| throughput, with generating the messages | {:.0} msg/s |",
        o.messages as f64 / wall.as_secs_f64()
    );
    println!(
        "| wall time / CPU time during the build | {:.1} s / {:.1} s ({:.2} cores) |",
        wall.as_secs_f64(),
        cpu,
        cpu / wall.as_secs_f64()
    );
    println!(
        "| CPU per message (build incl. merges during it) | {:.0} us |",
        cpu / o.messages.max(1) as f64 * 1e6
    );
    println!(
        "| one batch of {BATCH}: p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        ms(pct(&batch_times, 50.0)),
        ms(pct(&batch_times, 99.0)),
        ms(batch_times.last().copied().unwrap_or_default())
    );
    println!(
        "| merges after the last batch | {:.1} s, {:.1} s CPU |",
        settle.as_secs_f64(),
        settle_cpu
    );
    println!(
        "| message bodies | {:.0} bytes on average, {:.0} MiB in all |",
        avg_body,
        generator.body_bytes as f64 / 1048576.0
    );
    println!(
        "| peak RSS of the process | {} MiB |",
        status_kib("VmHWM:") / 1024
    );
    drop(index);
    Ok(())
}

fn main() -> Res<()> {
    let o = parse_options()?;
    let root = o
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/chat-bench/search-{}", o.messages)));
    let index_dir = root.join("index");
    let params_file = root.join("bench-params");
    let params = format!(
        "corpus={CORPUS_VERSION} messages={} seed={}\n",
        o.messages, o.seed
    );

    let mut rng = Rng(o.seed);
    let world = World::new(&mut rng);
    let vocab = Vocabulary::new();
    println!(
        "corpus: {} English words + {} Chinese + {} Japanese; {} conversations ({} direct, {} groups); \
         typical readers: {} conversations each; heavy readers: {} groups",
        vocab.english.len(),
        CHINESE.len(),
        JAPANESE.len(),
        world.conversations.len(),
        DIRECTS,
        GROUPS,
        world.typical[0].conversations,
        world.heavy[0].groups.len()
    );

    let reusable = o.reuse
        && std::fs::read_to_string(&params_file).is_ok_and(|p| p == params)
        && index_dir.join("meta.json").exists();
    if reusable {
        println!("reusing the index in {}", root.display());
    } else {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        build(&o, &index_dir, &world, &vocab)?;
        std::fs::write(&params_file, &params)?;
    }

    let t = Instant::now();
    let index = MessageIndex::open(&index_dir)?;
    let open = t.elapsed();
    if index.checkpoint() != o.messages as u64 {
        return Err(format!(
            "the index in {} holds checkpoint {}, not {}: run without --reuse",
            root.display(),
            index.checkpoint(),
            o.messages
        )
        .into());
    }
    println!();
    println!("## Index on disk");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| documents | {} |", index.doc_count());
    println!(
        "| size on disk | {:.0} MiB ({:.0} bytes per message) |",
        dir_bytes(&index_dir) as f64 / 1048576.0,
        dir_bytes(&index_dir) as f64 / o.messages.max(1) as f64
    );
    println!("| segments | {} |", segment_count(&index_dir));
    println!("| MessageIndex::open | {:.0} ms |", ms(open));

    // Warm-up (a running node has its index in the page cache and mapped).
    let warm = make_queries(
        o.seed.wrapping_add(1_000),
        o.warmup,
        &world,
        &vocab,
        o.limit,
    );
    let t = Instant::now();
    let warm_samples = run_queries(&index, &warm)?;
    if let Some(first) = warm_samples.first() {
        println!(
            "| warm-up: first query / {} queries | {:.1} ms / {:.2} s |",
            warm.len(),
            ms(first.latency),
            t.elapsed().as_secs_f64()
        );
    }

    let mut rounds: Vec<Samples> = Vec::new();
    for round in 0..o.rounds {
        let queries = make_queries(
            o.seed.wrapping_add(round as u64 + 1),
            o.queries,
            &world,
            &vocab,
            o.limit,
        );
        let cpu0 = cpu_seconds();
        let t = Instant::now();
        let samples = run_queries(&index, &queries)?;
        let wall = t.elapsed();
        let all = select(&samples, None, None);
        println!(
            "round {}: {} queries in {:.2} s ({:.0} queries/s on one thread, {:.2} cores), \
             p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; CPU p50 {:.2} ms, \
             p99 {:.2} ms; {:.0}% of the time waiting for a CPU",
            round + 1,
            samples.len(),
            wall.as_secs_f64(),
            samples.len() as f64 / wall.as_secs_f64(),
            (cpu_seconds() - cpu0) / wall.as_secs_f64(),
            all.p50,
            all.p90,
            all.p99,
            all.max,
            all.cpu_p50,
            all.cpu_p99,
            all.waiting
        );
        rounds.push(samples);
    }

    println!();
    println!(
        "## Query latency, ms (limit {}; median over {} rounds of {} queries; CPU = the \
         searching thread's own CPU time)",
        o.limit, o.rounds, o.queries
    );
    println!(
        "| kind | reader | queries | p50 | p90 | p99 | max | CPU p50 | CPU p99 | waiting for CPU \
         | hits/page | pages with more |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut cells: Vec<(String, String, Option<Kind>, Option<bool>)> = Vec::new();
    for kind in KINDS {
        for (h, reader) in READERS.iter().enumerate() {
            cells.push((
                kind.name().into(),
                (*reader).into(),
                Some(kind),
                Some(h == 1),
            ));
        }
    }
    for (h, reader) in READERS.iter().enumerate() {
        cells.push(("**all kinds**".into(), (*reader).into(), None, Some(h == 1)));
    }
    cells.push(("**all**".into(), "both".into(), None, None));
    for (kind_name, reader, kind, heavy) in cells {
        let per_round: Vec<Summary> = rounds.iter().map(|r| select(r, kind, heavy)).collect();
        let med = |f: fn(&Summary) -> f64| median(per_round.iter().map(f).collect());
        println!(
            "| {kind_name} | {reader} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% \
             | {:.1} | {:.0}% |",
            per_round.first().map_or(0, |s| s.n),
            med(|s| s.p50),
            med(|s| s.p90),
            med(|s| s.p99),
            med(|s| s.max),
            med(|s| s.cpu_p50),
            med(|s| s.cpu_p99),
            med(|s| s.waiting),
            med(|s| s.mean_hits),
            med(|s| s.full_pages)
        );
    }
    Ok(())
}
