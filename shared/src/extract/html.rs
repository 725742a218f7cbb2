//! HTML extraction for the extract stage: parses the page with a real HTML5 parser (`scraper`,
//! i.e. html5ever, so broken markup is repaired the way browsers do) and renders the readable part
//! as Markdown-flavoured text. Page chrome — scripts, styles, navigation, site header and footer,
//! sidebars, forms, hidden elements — is dropped so it is neither embedded nor matched by search.
//! Headings become `#` headings so the Markdown-aware chunker can split on them; lists, tables and
//! preformatted text keep their shape.
//!
//! The tree is walked iteratively (open/close edges), so deeply nested markup cannot overflow the
//! stack.

use ego_tree::NodeRef;
use ego_tree::iter::Edge;
use scraper::{Html, Node};

use super::{ExtractError, Limits};
use crate::model::{DocFormat, ExtractedDoc, Section};

/// Elements whose whole subtree is chrome or not text.
const SKIPPED: &[&str] = &[
    "script", "style", "nav", "aside", "noscript", "template", "head", "svg", "canvas", "iframe",
    "object", "form", "button", "select", "dialog",
];

/// ARIA landmark roles that mark chrome when set explicitly on any element.
const CHROME_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
];

/// Elements that start and end a paragraph-like block.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "blockquote",
    "figure",
    "figcaption",
    "dl",
    "dt",
    "dd",
    "address",
    "details",
    "summary",
    "table",
    "hr",
    "ul",
    "ol",
    "body",
    "caption",
];

/// Deepest list nesting shown by indentation; deeper items are indented like this level, so the
/// output stays linear in the input (`"  ".repeat(depth)` per item made N nested lists N² bytes).
const MAX_LIST_INDENT: usize = 8;

/// Deepest element nesting accepted (Chromium's parser stops nesting at the same depth). The HTML
/// tree builder scans the stack of open elements for many start tags, so its cost is the number of
/// tags times the depth: 100k nested elements took minutes.
pub const MAX_NESTING: usize = 512;

/// Elements that never nest (void) or that the tree builder closes implicitly when a sibling
/// starts (optional end tags); neither deepens a page the way unclosed `<div>`s do.
const FLAT: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "rb", "rt",
    "rp", "thead", "tbody", "tfoot", "colgroup", "caption", "html", "head", "body",
];

/// Elements whose content is raw text: their `<` are not tags.
const RAW_TEXT: &[&str] = &[
    "script",
    "style",
    "textarea",
    "title",
    "xmp",
    "iframe",
    "noembed",
    "noframes",
    "plaintext",
];

/// Whether the tags of `html` nest deeper than `limit`, by a linear scan of its tags (start tags
/// deepen, end tags close, void and optional-end elements count for nothing, comments and raw text
/// are skipped). An estimate, but unclosed elements are what it can overcount, and the tree builder
/// nests those too.
fn nests_deeper_than(html: &str, limit: usize) -> bool {
    let bytes = html.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(offset) = memchr_lt(&bytes[i..]) {
        i += offset + 1;
        if bytes[i..].starts_with(b"!--") {
            i = html[i..].find("-->").map_or(bytes.len(), |e| i + e + 3);
            continue;
        }
        let closing = bytes.get(i) == Some(&b'/');
        let name_start = i + usize::from(closing);
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if name_len == 0 || !bytes[name_start].is_ascii_alphabetic() {
            continue;
        }
        let name = html[name_start..name_start + name_len].to_ascii_lowercase();
        let end = html[name_start..]
            .find('>')
            .map_or(bytes.len(), |e| name_start + e);
        let self_closing = end > 0 && bytes.get(end - 1) == Some(&b'/');
        i = end.min(bytes.len());
        if FLAT.contains(&name.as_str()) {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
            continue;
        }
        if RAW_TEXT.contains(&name.as_str()) {
            let close = format!("</{name}");
            i = find_ascii_case_insensitive(&html[i..], &close).map_or(bytes.len(), |e| i + e);
            continue;
        }
        if !self_closing {
            depth += 1;
            if depth > limit {
                return true;
            }
        }
    }
    false
}

fn memchr_lt(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'<')
}

fn find_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Edges of the tree walked between two checks of the limits (cancellation, text cap).
const CHECK_EVERY: usize = 4096;

/// Extract the readable text and title of an HTML page. `name` names the page in errors; the walk
/// stops with an error once the text passes `limits.max_bytes` or `limits.cancel` fires.
pub fn extract(name: &str, html: &str, limits: &Limits) -> Result<ExtractedDoc, ExtractError> {
    limits.check(name, 0)?;
    if nests_deeper_than(html, MAX_NESTING) {
        return Err(ExtractError::Unsupported {
            name: name.to_string(),
            detail: format!("HTML elements nested more than {MAX_NESTING} deep"),
        });
    }
    limits.check(name, 0)?;
    let document = Html::parse_document(html);
    let mut out = Renderer::default();
    let mut skip_until = None;
    // Open <article>/<section>/<main> elements around the current node (see `is_chrome`).
    let mut in_content = 0usize;
    for (step, edge) in document.tree.root().traverse().enumerate() {
        if step % CHECK_EVERY == 0 {
            limits.check(name, out.out.len())?;
        }
        match edge {
            Edge::Open(node) => {
                if skip_until.is_some() {
                    continue;
                }
                if is_chrome(node, in_content > 0) {
                    skip_until = Some(node.id());
                    continue;
                }
                match node.value() {
                    Node::Text(text) => out.text(text),
                    Node::Element(el) => {
                        if is_content(el.name()) {
                            in_content += 1;
                        }
                        out.open(el.name())
                    }
                    Node::Document
                    | Node::Fragment
                    | Node::Doctype(_)
                    | Node::Comment(_)
                    | Node::ProcessingInstruction(_) => {}
                }
            }
            Edge::Close(node) => {
                if let Some(id) = skip_until {
                    if id == node.id() {
                        skip_until = None;
                    }
                    continue;
                }
                if let Node::Element(el) = node.value() {
                    if is_content(el.name()) {
                        in_content = in_content.saturating_sub(1);
                    }
                    out.close(el.name());
                }
            }
        }
    }
    limits.check(name, out.out.len())?;
    let text = out.finish();
    let title = page_title(&document).or_else(|| first_h1(&text));
    Ok(ExtractedDoc {
        format: DocFormat::Html,
        title,
        sections: vec![Section { text, page: None }],
    })
}

fn is_content(name: &str) -> bool {
    matches!(name, "article" | "section" | "main")
}

/// `in_content`: some ancestor is an `<article>`, `<section>` or `<main>` (tracked by the walk, as
/// asking each node for its ancestors is quadratic in the nesting depth).
fn is_chrome(node: NodeRef<'_, Node>, in_content: bool) -> bool {
    let Node::Element(el) = node.value() else {
        return false;
    };
    let name = el.name();
    if SKIPPED.contains(&name) {
        return true;
    }
    if el.attr("hidden").is_some() || el.attr("aria-hidden") == Some("true") {
        return true;
    }
    if el
        .attr("role")
        .is_some_and(|role| CHROME_ROLES.contains(&role))
    {
        return true;
    }
    // As in the HTML spec's banner/contentinfo rule: <header>/<footer> are site chrome unless they
    // belong to an article or section, where they hold its heading or byline.
    if name == "header" || name == "footer" {
        return !in_content;
    }
    false
}

fn page_title(document: &Html) -> Option<String> {
    let title = document
        .tree
        .root()
        .descendants()
        .find(|n| matches!(n.value(), Node::Element(el) if el.name() == "title"))?;
    let text: String = title
        .descendants()
        .filter_map(|n| n.value().as_text().map(|t| &**t))
        .collect();
    let title = collapse_whitespace(&text);
    (!title.is_empty()).then_some(title)
}

fn first_h1(rendered: &str) -> Option<String> {
    rendered
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .map(|t| t.trim().to_string())
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Builds the output text from open/close/text events.
#[derive(Default)]
struct Renderer {
    out: String,
    /// Whitespace seen since the last word, emitted lazily as one space.
    pending_space: bool,
    /// Inside `<pre>`: whitespace is kept verbatim.
    pre_depth: usize,
    /// Inside a heading: line breaks become spaces so the heading stays on one line.
    heading_depth: usize,
    /// One entry per open list: `Some(next number)` for `<ol>`, `None` for `<ul>`.
    lists: Vec<Option<u32>>,
    /// Cells already written in the current table row.
    cells_in_row: usize,
}

impl Renderer {
    fn text(&mut self, text: &str) {
        if self.pre_depth > 0 {
            self.out.push_str(text);
            return;
        }
        for c in text.chars() {
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            if self.pending_space && !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
                self.out.push(' ');
            }
            self.pending_space = false;
            self.out.push(c);
        }
    }

    fn open(&mut self, name: &str) {
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.block_break();
                let level = usize::from(name.as_bytes()[1] - b'0');
                self.out.push_str(&"#".repeat(level));
                self.out.push(' ');
                self.heading_depth += 1;
            }
            "ul" => {
                self.block_break();
                self.lists.push(None);
            }
            "ol" => {
                self.block_break();
                self.lists.push(Some(1));
            }
            "li" => {
                self.line_break();
                let depth = self.lists.len().clamp(1, MAX_LIST_INDENT);
                for _ in 1..depth {
                    self.out.push_str("  ");
                }
                match self.lists.last_mut() {
                    Some(Some(n)) => {
                        self.out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    Some(None) | None => self.out.push_str("- "),
                }
            }
            "pre" => {
                self.block_break();
                self.out.push_str("```\n");
                self.pre_depth += 1;
            }
            "br" => {
                if self.heading_depth > 0 {
                    self.pending_space = true;
                } else {
                    self.line_break_forced();
                }
            }
            "tr" => {
                self.line_break();
                self.cells_in_row = 0;
            }
            "td" | "th" => {
                if self.cells_in_row > 0 {
                    self.trim_trailing_spaces();
                    self.out.push_str(" | ");
                }
                self.pending_space = false;
                self.cells_in_row += 1;
            }
            _ if BLOCKS.contains(&name) => self.block_break(),
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.heading_depth = self.heading_depth.saturating_sub(1);
                self.block_break();
            }
            "ul" | "ol" => {
                self.lists.pop();
                self.block_break();
            }
            "pre" => {
                self.pre_depth = self.pre_depth.saturating_sub(1);
                if !self.out.ends_with('\n') {
                    self.out.push('\n');
                }
                self.out.push_str("```");
                self.block_break();
            }
            "tr" => self.line_break(),
            _ if BLOCKS.contains(&name) => self.block_break(),
            _ => {}
        }
    }

    fn trim_trailing_spaces(&mut self) {
        let trimmed = self.out.trim_end_matches([' ', '\t']).len();
        self.out.truncate(trimmed);
    }

    /// End the current line unless it is already ended.
    fn line_break(&mut self) {
        self.pending_space = false;
        self.trim_trailing_spaces();
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    /// `<br>`: always a new line, even after another `<br>` (collapsed later if excessive).
    fn line_break_forced(&mut self) {
        self.pending_space = false;
        self.trim_trailing_spaces();
        if !self.out.is_empty() {
            self.out.push('\n');
        }
    }

    /// Separate blocks by one blank line.
    fn block_break(&mut self) {
        self.line_break();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    fn finish(self) -> String {
        let mut result = String::with_capacity(self.out.len());
        let mut blank_run = 0;
        for line in self.out.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                blank_run += 1;
                if blank_run > 1 {
                    continue;
                }
            } else {
                blank_run = 0;
            }
            result.push_str(line);
            result.push('\n');
        }
        result.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrome_is_dropped_and_structure_kept() {
        let page = r#"<!doctype html><html><head><title> My
            Page </title><style>body{color:red}</style></head><body>
            <header><a href="/">SiteName</a></header>
            <nav><ul><li>Home</li><li>About</li></ul></nav>
            <main><article><header><h1>Real   Heading</h1></header>
            <p>First <b>bold</b> paragraph.</p>
            <h2>Steps</h2><ol><li>Mix</li><li>Bake</li></ol>
            <table><tr><th>Item</th><th>Qty</th></tr><tr><td>Flour</td><td>500 g</td></tr></table>
            <div hidden>secret hidden</div>
            </article></main>
            <script>var tracking = 1;</script>
            <footer>Copyright Footer</footer></body></html>"#;
        let doc = extract("page.html", page, &Limits::none()).unwrap();
        assert_eq!(doc.title.as_deref(), Some("My Page"));
        let text = &doc.sections[0].text;
        for chrome in [
            "SiteName",
            "Home",
            "About",
            "tracking",
            "color:red",
            "Footer",
            "secret",
        ] {
            assert!(!text.contains(chrome), "{chrome:?} leaked into {text:?}");
        }
        assert_eq!(
            text,
            "# Real Heading\n\nFirst bold paragraph.\n\n## Steps\n\n1. Mix\n2. Bake\n\n\
             Item | Qty\nFlour | 500 g"
        );
    }

    #[test]
    fn title_falls_back_to_first_h1_and_pre_is_verbatim() {
        let doc = extract(
            "t.html",
            "<body><h1>Only H1</h1><pre>a  b\n  c</pre><p>x<br>y</p></body>",
            &Limits::none(),
        )
        .unwrap();
        assert_eq!(doc.title.as_deref(), Some("Only H1"));
        assert_eq!(
            doc.sections[0].text,
            "# Only H1\n\n```\na  b\n  c\n```\n\nx\ny"
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let nested = |depth: usize| {
            format!(
                "{}deep{}",
                "<div><b>".repeat(depth / 2),
                "</b></div>".repeat(depth / 2)
            )
        };
        let page = nested(MAX_NESTING);
        assert_eq!(
            extract("deep.html", &page, &Limits::none())
                .unwrap()
                .sections[0]
                .text,
            "deep"
        );
        let err = extract("deeper.html", &nested(100_000), &Limits::none()).unwrap_err();
        assert!(matches!(err, ExtractError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("deeper.html"), "{err}");
    }

    #[test]
    fn nesting_estimate_ignores_flat_elements_comments_and_raw_text() {
        let sloppy = format!(
            "<html><body>{}<!-- <div><div><div> --><script>{}</script></body></html>",
            "<p>para<li>item<br><img src=x><td>cell<input/>".repeat(5_000),
            "if (a<b) { x = '<div>'; }".repeat(5_000)
        );
        assert!(!nests_deeper_than(&sloppy, 8));
        assert!(nests_deeper_than(&"<div>".repeat(9), 8));
        assert!(!nests_deeper_than(&"<div></div>".repeat(100), 8));
    }

    #[test]
    fn nested_lists_are_indented_to_a_bounded_depth() {
        let depth = MAX_NESTING;
        let page = format!(
            "{}{}",
            "<ul><li>item".repeat(depth),
            "</li></ul>".repeat(depth)
        );
        let text = extract("lists.html", &page, &Limits::none())
            .unwrap()
            .sections[0]
            .text
            .clone();
        let items: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(items.len(), depth);
        assert_eq!(items[..3], ["- item", "  - item", "    - item"]);
        let widest = items.iter().map(|l| l.len()).max().unwrap();
        assert_eq!(widest, 2 * (MAX_LIST_INDENT - 1) + "- item".len());
    }

    #[test]
    fn the_text_cap_and_cancellation_stop_the_walk() {
        let page = format!("<p>{}</p>", "word ".repeat(100_000));
        let small = Limits {
            max_bytes: 10_000,
            cancel: Default::default(),
        };
        let err = extract("big.html", &page, &small).unwrap_err();
        assert!(
            matches!(err, ExtractError::TooMuchText { limit: 10_000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("big.html"));
        let cancelled = Limits::none();
        cancelled.cancel.cancel();
        let err = extract("big.html", &page, &cancelled).unwrap_err();
        assert!(matches!(err, ExtractError::Cancelled { .. }), "{err}");
    }
}
