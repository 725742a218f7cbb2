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

/// Extract the readable text and title of an HTML page.
pub fn extract(html: &str) -> ExtractedDoc {
    let document = Html::parse_document(html);
    let mut out = Renderer::default();
    let mut skip_until = None;
    for edge in document.tree.root().traverse() {
        match edge {
            Edge::Open(node) => {
                if skip_until.is_some() {
                    continue;
                }
                if is_chrome(node) {
                    skip_until = Some(node.id());
                    continue;
                }
                match node.value() {
                    Node::Text(text) => out.text(text),
                    Node::Element(el) => out.open(el.name()),
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
                    out.close(el.name());
                }
            }
        }
    }
    let text = out.finish();
    let title = page_title(&document).or_else(|| first_h1(&text));
    ExtractedDoc {
        format: DocFormat::Html,
        title,
        sections: vec![Section { text, page: None }],
    }
}

fn is_chrome(node: NodeRef<'_, Node>) -> bool {
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
        return !node.ancestors().any(|a| {
            matches!(a.value(), Node::Element(e) if matches!(e.name(), "article" | "section" | "main"))
        });
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
                let depth = self.lists.len().max(1);
                self.out.push_str(&"  ".repeat(depth - 1));
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
        let doc = extract(page);
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
        let doc = extract("<body><h1>Only H1</h1><pre>a  b\n  c</pre><p>x<br>y</p></body>");
        assert_eq!(doc.title.as_deref(), Some("Only H1"));
        assert_eq!(
            doc.sections[0].text,
            "# Only H1\n\n```\na  b\n  c\n```\n\nx\ny"
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let page = format!("{}deep{}", "<div>".repeat(30_000), "</div>".repeat(30_000));
        assert_eq!(extract(&page).sections[0].text, "deep");
    }
}
