//! A deterministic generator of large mbox files for the store benchmark.
//!
//! The mail looks like what a small office receives: three `Received:`
//! headers, folded lines, some RFC 2047 encoded subjects and names, plain
//! text (60%), text and HTML alternatives (25%), and mail with a base64
//! attachment (15%). Bodies are stored mboxrd-quoted as postroom stores
//! them: `From ` becomes `>From ` and `>From ` becomes `>>From `.
//!
//! One pass writes two variants of the same mail: one with the state
//! headers postroom writes (rendered by [`state::render`], so opening it
//! is pure parsing), and optionally one without, as an MTA delivers.
//!
//! Sizes lean towards the small end of each range, as in real mailboxes:
//! that keeps the average near 10 KiB while attachments still reach
//! 200 KiB now and then.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use postroom::store::from_line;
use postroom::store::state::{self, Base, Block, Flags};

/// xorshift64*: small, fast, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` below 2^32).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `p` times in a thousand.
    pub fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// The vocabulary of the generated text, split at white space.
const WORD_TEXT: &str = "\
    the a to and of in for on with we you it is be this that will can our your please thanks meeting \
    invoice schedule project review attached report budget quarter client update draft contract office \
    printer delivery order payment account tomorrow today next week Monday Tuesday Wednesday Thursday \
    Friday morning afternoon room call agenda minutes notes version final changes comments figures \
    numbers spreadsheet customer supplier shipment warehouse stock price offer quote discount deadline \
    holiday leave team colleagues everyone building parking kitchen coffee lunch training session \
    presentation slides feedback approval signed copy original scanned folder server backup password \
    network laptop screen phone number address postcode label package courier tracking reminder overdue \
    receipt expenses travel hotel train flight booking confirmed cancelled moved postponed about after \
    before again also already still just only soon later maybe probably certainly quickly carefully \
    exactly roughly around between through during without because although unless whether which where \
    when what there their they them have has had was were been does did done make made take took send \
    sent check checked need needs want know think looks good fine great small large new old first last \
    second third few several many some all any each both either more less most least same other another \
    such";

fn words() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| WORD_TEXT.split_whitespace().collect())
}

const FIRST: &[&str] = &[
    "Alice", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Katja", "Lars",
    "Maya", "Nikolai", "Olga", "Pavel", "Quentin", "Rosa", "Sven", "Tara", "Ulrich", "Vera", "Wim", "Yara", "Zoe",
];

const LAST: &[&str] = &[
    "Andersen",
    "Baker",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Urban",
    "Vogel",
    "Weber",
    "Yilmaz",
    "Zimmer",
];

/// Names with letters outside ASCII: they go into `From:` as encoded words.
const NAMES_8BIT: &[&str] = &[
    "Jürgen Müller",
    "Zoë Lefèvre",
    "Søren Østergaard",
    "José Martínez",
    "Łukasz Wójcik",
    "Ångström Åsa",
    "Çelik Gökhan",
    "François Gérard",
];

const DOMAINS: &[&str] =
    &["example.com", "example.net", "mail.example.com", "lists.example.net", "corp.example.com", "shop.example.net"];

/// Subjects with letters outside ASCII, for RFC 2047 encoded words.
const SUBJECTS_8BIT: &[&str] = &[
    "Réunion d'équipe jeudi",
    "Grüße aus München",
    "Überweisung für März",
    "Café et croissants à 10h",
    "Año nuevo, presupuesto nuevo",
    "Søknad om ferie i juli",
    "Zaproszenie na spotkanie — środa",
    "Ürün kataloğu güncellendi",
    "Prezentácia pre klienta",
    "Devis rénovation façade",
    "Straße gesperrt, Lieferung später",
    "Näin täytät matkalaskun",
];

const MAILERS: &[&str] = &[
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0",
    "X-Mailer: Microsoft Outlook 16.0",
    "User-Agent: Mutt/2.2.13 (2024-03-09)",
    "X-Mailer: Apple Mail (2.3774.300.61.1.2)",
];

const ATTACHMENTS: &[(&str, &str)] = &[
    ("application/pdf", "report"),
    ("application/pdf", "invoice"),
    ("image/jpeg", "IMG"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "budget"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "minutes"),
    ("image/png", "screenshot"),
];

const ATTACHMENT_EXT: &[(&str, &str)] = &[
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
];

/// The keywords some messages carry; the first message's `X-IMAPbase`
/// lists them all, so opening the file has nothing to add.
pub const KEYWORDS: &[&str] = &["$Forwarded", "NonJunk"];

/// The UIDVALIDITY of every generated mailbox.
pub const UIDVALIDITY: u32 = 1_735_689_600;

/// Kinds of generated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain = 0,
    Alternative = 1,
    Attachment = 2,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub messages: u32,
    pub state_bytes: u64,
    pub fresh_bytes: u64,
    /// Messages per [`Kind`].
    pub kinds: [u32; 3],
    /// Body lines that start with `From ` or `>From ` before quoting.
    pub from_lines: u64,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 of `data`, padded, on one line.
pub fn base64(data: &[u8], out: &mut Vec<u8>) {
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 { B64[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if c.len() > 2 { B64[n as usize & 63] } else { b'=' });
    }
}

/// RFC 2047 `B` encoded words, each under 76 characters, folded onto
/// continuation lines.
fn encoded_words_b(text: &str, out: &mut Vec<u8>) {
    let mut chunk_start = 0;
    let mut first = true;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        let next = i + c.len_utf8();
        if next - chunk_start > 42 {
            push_b_word(&text[chunk_start..end], first, out);
            first = false;
            chunk_start = end;
        }
        end = next;
    }
    if chunk_start < text.len() {
        push_b_word(&text[chunk_start..], first, out);
    }
}

fn push_b_word(part: &str, first: bool, out: &mut Vec<u8>) {
    if !first {
        out.extend_from_slice(b"\n ");
    }
    out.extend_from_slice(b"=?UTF-8?B?");
    base64(part.as_bytes(), out);
    out.extend_from_slice(b"?=");
}

/// RFC 2047 `Q` encoding in ISO-8859-1, or `None` if `text` has letters
/// outside Latin-1.
fn encoded_word_q(text: &str) -> Option<Vec<u8>> {
    let mut out = b"=?ISO-8859-1?Q?".to_vec();
    for c in text.chars() {
        let v = c as u32;
        if v > 0xff {
            return None;
        }
        match c {
            ' ' => out.push(b'_'),
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | ',' | '-' | '!' => out.push(v as u8),
            _ => out.extend_from_slice(format!("={v:02X}").as_bytes()),
        }
    }
    out.extend_from_slice(b"?=");
    Some(out)
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// An RFC 5322 date for `t` seen from a zone `zone` minutes east of UTC.
fn rfc5322(t: i64, zone: i64) -> String {
    let local = t + zone * 60;
    let days = local.div_euclid(86400);
    let secs = local.rem_euclid(86400);
    let (y, m, d) = from_line::civil_from_days(days);
    let sign = if zone < 0 { '-' } else { '+' };
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} {}{:02}{:02}",
        WEEKDAYS[(days + 4).rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        sign,
        zone.abs() / 60,
        zone.abs() % 60
    )
}

fn hex_id(rng: &mut Rng, len: usize) -> String {
    let v = rng.next_u64();
    format!("{v:016X}")[..len].to_string()
}

/// Appends one body line, quoting it as mboxrd stores it.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    let gt = line.iter().take_while(|&&b| b == b'>').count();
    if line[gt..].starts_with(b"From ") {
        out.push(b'>');
    }
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// One line of words, up to a width drawn from `lo..=hi`.
fn words_line(rng: &mut Rng, line: &mut Vec<u8>, (lo, hi): (u64, u64)) {
    let width = rng.range(lo, hi) as usize;
    let start = line.len();
    let mut capital = start == 0 || line.last() == Some(&b' ');
    loop {
        let w = rng.pick(words()).as_bytes();
        let sep = usize::from(line.len() > start);
        if line.len() - start + sep + w.len() > width && line.len() > start {
            break;
        }
        if sep == 1 {
            line.push(b' ');
        }
        line.extend_from_slice(w);
        if capital {
            let i = line.len() - w.len();
            line[i] = line[i].to_ascii_uppercase();
            capital = false;
        }
        if rng.per_mille(60) {
            line.push(if rng.per_mille(800) { b'.' } else { b',' });
            capital = line.last() == Some(&b'.');
        }
    }
}

/// A plain text body of about `target` bytes, with paragraphs, quoted
/// replies, now and then a line that starts with `From ` or `>From `, and
/// a signature. Returns how many such lines it wrote.
fn text_body(rng: &mut Rng, target: usize, out: &mut Vec<u8>) -> u64 {
    let start = out.len();
    let mut from_lines = 0;
    let mut line = Vec::with_capacity(100);
    out.extend_from_slice(format!("Hi {},\n\n", rng.pick(FIRST)).as_bytes());
    while out.len() - start < target {
        let r = rng.below(1000);
        if r < 25 {
            // A sentence that happens to start with "From".
            line.clear();
            line.extend_from_slice(b"From ");
            words_line(rng, &mut line, (40, 72));
            push_line(out, &line);
            from_lines += 1;
        } else if r < 35 {
            // A reply quoting such a sentence: ">From " on the wire.
            line.clear();
            line.extend_from_slice(b">From ");
            words_line(rng, &mut line, (40, 72));
            push_line(out, &line);
            from_lines += 1;
        } else if r < 42 {
            // A forwarded mbox excerpt: a line that looks like a separator.
            let t = 1_600_000_000 + rng.below(100_000_000) as i64;
            let l = from_line::format(&format!("{}@{}", rng.pick(FIRST).to_lowercase(), rng.pick(DOMAINS)), t);
            push_line(out, l.as_bytes());
            from_lines += 1;
        } else if r < 150 {
            out.extend_from_slice(
                format!("On {}, {} wrote:\n", rfc5322(1_700_000_000 + rng.below(1 << 26) as i64, 60), rng.pick(FIRST))
                    .as_bytes(),
            );
            for _ in 0..rng.range(2, 6) {
                line.clear();
                line.extend_from_slice(b"> ");
                words_line(rng, &mut line, (60, 74));
                push_line(out, &line);
            }
        } else {
            for _ in 0..rng.range(2, 7) {
                line.clear();
                words_line(rng, &mut line, (62, 76));
                push_line(out, &line);
            }
        }
        out.push(b'\n');
    }
    out.extend_from_slice(
        format!("-- \n{} {}\nExample Office, +1 555 0100\n", rng.pick(FIRST), rng.pick(LAST)).as_bytes(),
    );
    from_lines
}

/// An HTML body of about `target` bytes, lines of about 70 characters.
fn html_body(rng: &mut Rng, target: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(
        b"<!DOCTYPE html>\n<html>\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\n</head>\n<body style=\"font-family: Arial, sans-serif; font-size: 11pt;\">\n",
    );
    let mut line = Vec::with_capacity(100);
    while out.len() - start < target {
        out.extend_from_slice(b"<div><p style=\"margin: 0 0 12px 0;\">\n");
        for _ in 0..rng.range(2, 6) {
            line.clear();
            if rng.per_mille(100) {
                line.extend_from_slice(b"<b>");
                words_line(rng, &mut line, (30, 40));
                line.extend_from_slice(b"</b> ");
            }
            words_line(rng, &mut line, (62, 76));
            push_line(out, &line);
        }
        out.extend_from_slice(b"</p></div>\n");
    }
    out.extend_from_slice(b"</body>\n</html>\n");
}

/// A size in `lo..=hi` leaning towards `lo` (the cube of a uniform).
fn small_leaning(rng: &mut Rng, lo: u64, hi: u64) -> usize {
    let u = rng.unit();
    (lo as f64 + (hi - lo) as f64 * u * u * u) as usize
}

/// Attachment size: mostly just above 20 KiB, a tenth spread up to 200 KiB.
fn attachment_size(rng: &mut Rng) -> usize {
    if rng.per_mille(900) {
        rng.range(20 << 10, 24 << 10) as usize
    } else {
        // Log-uniform: every size band equally likely.
        let lo = (24u64 << 10) as f64;
        let hi = (200u64 << 10) as f64;
        (lo * (hi / lo).powf(rng.unit())) as usize
    }
}

/// A generated message: its envelope and state, and its content as stored.
pub struct Message {
    pub sender: String,
    pub date: i64,
    pub flags: Flags,
    pub keywords: Vec<&'static str>,
    pub kind: Kind,
    pub from_lines: u64,
}

/// Writes one message's content (header, blank line, body; no `From_`
/// line, no separator) to `out`.
pub fn message(rng: &mut Rng, n: u64, date: i64, out: &mut Vec<u8>) -> Message {
    let kind = match rng.below(100) {
        0..=59 => Kind::Plain,
        60..=84 => Kind::Alternative,
        _ => Kind::Attachment,
    };
    let (first, last) = (rng.pick(FIRST), rng.pick(LAST));
    let domain = rng.pick(DOMAINS);
    let sender = if domain.starts_with("lists.") {
        format!("bounces+{n}-{}@{domain}", first.to_lowercase())
    } else {
        format!("{}.{}@{domain}", first.to_lowercase(), last.to_lowercase())
    };
    let to_first = rng.pick(FIRST);
    let to = format!("{}@example.org", to_first.to_lowercase());
    let mx = rng.range(1, 4);
    let zone = [0i64, 60, 120, -300, -480, 330, 540][rng.below(7) as usize];

    // Trace fields, newest first, each folded as Postfix writes them.
    out.extend_from_slice(
        format!(
            "Received: from mx{mx}.example.net (mx{mx}.example.net [198.51.100.{}])\n\tby mail.example.org (Postfix) with ESMTPS id {}\n\tfor <{to}>; {}\n",
            rng.range(2, 250),
            hex_id(rng, 11),
            rfc5322(date, 0)
        )
        .as_bytes(),
    );
    out.extend_from_slice(
        format!(
            "Received: from smtp.{domain} (smtp.{domain} [203.0.113.{}])\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\n\tby mx{mx}.example.net (Postfix) with ESMTPS id {}\n\tfor <{to}>; {}\n",
            rng.range(2, 250),
            hex_id(rng, 10),
            rfc5322(date - 2, 0)
        )
        .as_bytes(),
    );
    out.extend_from_slice(
        format!(
            "Received: from [192.0.2.{}] (unknown [192.0.2.{}])\n\tby smtp.{domain} (Postfix) with ESMTPSA id {}\n\tfor <{to}>; {}\n",
            rng.range(2, 250),
            rng.range(2, 250),
            hex_id(rng, 9),
            rfc5322(date - 3, zone)
        )
        .as_bytes(),
    );
    out.extend_from_slice(
        format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s1;\n\tt={}; bh={}=;\n\th=From:To:Subject:Date:Message-ID;\n\tb={}\n",
            date - 3,
            hex_id(rng, 16),
            hex_id(rng, 16).repeat(4)
        )
        .as_bytes(),
    );
    if rng.per_mille(150) {
        let name = rng.pick(NAMES_8BIT);
        out.extend_from_slice(b"From: ");
        match encoded_word_q(name) {
            Some(q) if rng.per_mille(500) => out.extend_from_slice(&q),
            _ => encoded_words_b(name, out),
        }
        out.extend_from_slice(format!(" <{sender}>\n").as_bytes());
    } else {
        out.extend_from_slice(format!("From: \"{first} {last}\" <{sender}>\n").as_bytes());
    }
    out.extend_from_slice(format!("To: {to_first} <{to}>\n").as_bytes());
    if rng.per_mille(200) {
        out.extend_from_slice(format!("Cc: {} <{}@example.org>\n", rng.pick(FIRST), rng.pick(FIRST)).as_bytes());
    }
    out.extend_from_slice(b"Subject: ");
    let r = rng.below(1000);
    if r < 200 {
        let s = rng.pick(SUBJECTS_8BIT);
        match encoded_word_q(s) {
            Some(q) if r < 80 => out.extend_from_slice(&q),
            _ => encoded_words_b(s, out),
        }
    } else {
        if r < 350 {
            out.extend_from_slice(b"Re: ");
        } else if r < 400 {
            out.extend_from_slice(b"Fwd: ");
        }
        let mut line = Vec::new();
        words_line(rng, &mut line, (20, 60));
        out.extend_from_slice(&line);
    }
    out.push(b'\n');
    out.extend_from_slice(format!("Date: {}\n", rfc5322(date - 4, zone)).as_bytes());
    let mid = format!("{}.{}.{n}@{domain}", hex_id(rng, 12), date);
    out.extend_from_slice(format!("Message-ID: <{mid}>\n").as_bytes());
    if rng.per_mille(300) {
        let parent = format!("{}@{}", hex_id(rng, 14), rng.pick(DOMAINS));
        out.extend_from_slice(
            format!("In-Reply-To: <{parent}>\nReferences: <{}@example.org>\n <{parent}>\n", hex_id(rng, 14)).as_bytes(),
        );
    }
    out.extend_from_slice(rng.pick(MAILERS).as_bytes());
    out.extend_from_slice(b"\nMIME-Version: 1.0\n");

    let mut from_lines = 0;
    let boundary = format!("------------{}{}", hex_id(rng, 12), hex_id(rng, 12));
    match kind {
        Kind::Plain => {
            out.extend_from_slice(
                b"Content-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 8bit\n\n",
            );
            let size = small_leaning(rng, 1 << 10, 8 << 10);
            from_lines += text_body(rng, size, out);
        }
        Kind::Alternative => {
            out.extend_from_slice(
                format!("Content-Type: multipart/alternative;\n boundary=\"{boundary}\"\n\nThis is a multi-part message in MIME format.\n--{boundary}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n").as_bytes(),
            );
            let size = small_leaning(rng, 1 << 10, 8 << 10);
            from_lines += text_body(rng, size, out);
            out.extend_from_slice(
                format!("\n--{boundary}\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n")
                    .as_bytes(),
            );
            html_body(rng, size * 3 / 2, out);
            out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
        }
        Kind::Attachment => {
            let (ctype, stem) = ATTACHMENTS[rng.below(ATTACHMENTS.len() as u64) as usize];
            let ext = ATTACHMENT_EXT.iter().find(|(t, _)| *t == ctype).map_or("bin", |(_, e)| e);
            let name = format!("{stem}-{}.{ext}", rng.range(1000, 9999));
            out.extend_from_slice(
                format!("Content-Type: multipart/mixed;\n boundary=\"{boundary}\"\n\nThis is a multi-part message in MIME format.\n--{boundary}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n").as_bytes(),
            );
            let size = small_leaning(rng, 300, 3 << 10);
            from_lines += text_body(rng, size, out);
            out.extend_from_slice(
                format!("\n--{boundary}\nContent-Type: {ctype};\n name=\"{name}\"\nContent-Disposition: attachment;\n filename=\"{name}\"\nContent-Transfer-Encoding: base64\n\n").as_bytes(),
            );
            let size = attachment_size(rng);
            let mut raw = [0u8; 57];
            let mut left = size;
            while left > 0 {
                let n = left.min(57);
                for c in raw[..n].chunks_mut(8) {
                    let v = rng.next_u64().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
                base64(&raw[..n], out);
                out.push(b'\n');
                left -= n;
            }
            out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
        }
    }

    let mut flags = Flags::empty();
    if rng.per_mille(850) {
        flags.insert(Flags::SEEN);
    }
    if rng.per_mille(100) {
        flags.insert(Flags::ANSWERED);
    }
    if rng.per_mille(30) {
        flags.insert(Flags::FLAGGED);
    }
    let mut keywords = Vec::new();
    if rng.per_mille(50) {
        keywords.push(KEYWORDS[0]);
    }
    if rng.per_mille(20) {
        keywords.push(KEYWORDS[1]);
    }
    Message { sender, date, flags, keywords, kind, from_lines }
}

/// A message as another program appends it: `From_` line, content (no
/// state headers), separator. About `size` bytes of plain text.
pub fn delivered(rng: &mut Rng, n: u64, date: i64, size: usize) -> Vec<u8> {
    let mut out = from_line::format(&format!("mta-{n}@example.net"), date).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(
        format!(
            "Received: from mx1.example.net (mx1.example.net [198.51.100.7])\n\tby mail.example.org (Postfix) with ESMTPS id {}\n\tfor <alice@example.org>; {}\nFrom: Delivery <mta-{n}@example.net>\nTo: alice@example.org\nSubject: delivery {n}\nDate: {}\nMessage-ID: <delivery.{n}@example.net>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n",
            hex_id(rng, 11),
            rfc5322(date, 0),
            rfc5322(date, 0)
        )
        .as_bytes(),
    );
    let body = size.saturating_sub(out.len());
    text_body(rng, body, &mut out);
    out.push(b'\n');
    out
}

/// Message content as a client sends it with APPEND: CRLF line ends.
pub fn client_message(rng: &mut Rng, n: u64, size: usize) -> Vec<u8> {
    let mut lf = format!(
        "From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: draft {n}\nDate: {}\nMessage-ID: <draft.{n}@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n",
        rfc5322(1_790_000_000 + n as i64, 60)
    )
    .into_bytes();
    let body = size.saturating_sub(lf.len());
    text_body(rng, body, &mut lf);
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 40);
    for line in lf.split_inclusive(|&b| b == b'\n') {
        // The client sends the unquoted text.
        let line = if postroom::store::scan::is_quoted_from(line) { &line[1..] } else { line };
        out.extend_from_slice(&line[..line.len() - 1]);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Writes mail to `state_path` (with state headers) and, if given,
/// `fresh_path` (without), until `state_path` holds at least `target`
/// bytes.
pub fn generate(target: u64, seed: u64, state_path: &Path, fresh_path: Option<&Path>) -> io::Result<Summary> {
    let mut rng = Rng::new(seed);
    let state_file = File::create(state_path)?;
    let mut st = BufWriter::with_capacity(4 << 20, &state_file);
    let mut fresh = match fresh_path {
        Some(p) => Some(BufWriter::with_capacity(4 << 20, File::create(p)?)),
        None => None,
    };
    let mut sum = Summary::default();
    let mut content = Vec::with_capacity(1 << 20);
    let mut date: i64 = 1_735_689_600 + 3600 * 7;
    // The first message's block, for rewriting its base once UIDNEXT is known.
    let mut first: Option<(u64, Flags, Vec<&'static str>, usize)> = None;
    let placeholder =
        Base { uidvalidity: UIDVALIDITY, uidnext: 1, keywords: KEYWORDS.iter().map(|k| k.to_string()).collect() };
    while sum.state_bytes < target {
        let n = sum.messages as u64 + 1;
        date += rng.range(20, 1200) as i64;
        content.clear();
        let m = message(&mut rng, n, date, &mut content);
        let mut from = from_line::format(&m.sender, m.date).into_bytes();
        from.push(b'\n');
        let block = state::render(
            &Block { base: (n == 1).then_some(&placeholder), uid: n as u32, flags: m.flags, keywords: &m.keywords },
            None,
        )
        .expect("unconstrained render");
        if n == 1 {
            first = Some((from.len() as u64, m.flags, m.keywords.clone(), block.len()));
        }
        for part in [&from[..], &block, &content, b"\n"] {
            st.write_all(part)?;
        }
        sum.state_bytes += (from.len() + block.len() + content.len() + 1) as u64;
        if let Some(f) = fresh.as_mut() {
            for part in [&from[..], &content, b"\n"] {
                f.write_all(part)?;
            }
            sum.fresh_bytes += (from.len() + content.len() + 1) as u64;
        }
        sum.messages += 1;
        sum.kinds[m.kind as usize] += 1;
        sum.from_lines += m.from_lines;
    }
    st.flush()?;
    drop(st);
    if let Some((off, flags, keywords, len)) = first {
        // UIDLAST is zero-padded to ten digits: the final value fits exactly.
        let base = Base { uidnext: sum.messages + 1, ..placeholder };
        let block = state::render(&Block { base: Some(&base), uid: 1, flags, keywords: &keywords }, None)
            .expect("unconstrained render");
        assert_eq!(block.len(), len, "the base block changed length");
        state_file.write_all_at(&block, off)?;
    }
    state_file.sync_all()?;
    if let Some(mut f) = fresh {
        f.flush()?;
        f.get_ref().sync_all()?;
    }
    Ok(sum)
}
