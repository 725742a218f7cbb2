//! Property tests of the extract and chunk stages (issue 10, point 6): arbitrary bytes under
//! arbitrary names — random binary, markup soup, truncated UTF-8/UTF-16 — never panic; every
//! outcome is a document or a typed error naming the input, and chunk ranges point into the text.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use sluice_shared::chunk::Chunker;
use sluice_shared::extract::{self, ExtractSettings};
use tokio_util::sync::CancellationToken;

fn settings() -> ExtractSettings {
    ExtractSettings {
        pdf_timeout: Duration::from_secs(5),
        // Inputs that sniff as PDF must not start a real parser here: a missing program makes the
        // PDF path fail with a typed error, which is all this test needs of it.
        pdf_command: vec!["/nonexistent/sluice-worker".into()],
        max_extracted_bytes: 1 << 20,
        ..ExtractSettings::with_defaults()
    }
}

fn names() -> impl Strategy<Value = String> {
    (
        "[a-zA-Z0-9 ._/?#%:-]{0,24}",
        prop::sample::select(vec![
            "",
            ".txt",
            ".md",
            ".html",
            ".htm",
            ".pdf",
            ".PDF",
            ".xhtml",
            ".markdown",
            ".bin",
        ]),
    )
        .prop_map(|(stem, ext)| format!("{stem}{ext}"))
}

/// Markup-like soup: tags, entities, Markdown syntax, control characters and multibyte text.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "<html>",
        "<body>",
        "<ul>",
        "<li>",
        "</li>",
        "</ul>",
        "<pre>",
        "</pre>",
        "<h1>",
        "</h1>",
        "<table><tr><td>",
        "</td><td>",
        "<br>",
        "<header>",
        "<article>",
        "<script>",
        "</script>",
        "&amp;",
        "&#x1F980;",
        "&#0;",
        "&",
        "&nbsp",
        "# ",
        "## ",
        "```",
        "- ",
        "> ",
        "[a](",
        ")",
        "![i](data:image/png;base64,",
        "\n",
        "\r\n",
        "\t",
        " ",
        "word",
        "ünï",
        "世界",
        "\u{0}",
        "\u{1b}",
        "%PDF-",
        "\u{feff}",
        "e\u{301}",
    ]);
    prop::collection::vec(token, 0..200).prop_map(|t| t.concat().into_bytes())
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        soup(),
        // UTF-16 without a byte-order mark, possibly cut mid-unit.
        (soup(), any::<bool>(), 0usize..3).prop_map(|(s, be, cut)| {
            let text = String::from_utf8_lossy(&s).into_owned();
            let mut out: Vec<u8> = text
                .encode_utf16()
                .flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() })
                .collect();
            out.truncate(out.len().saturating_sub(cut));
            out
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn extract_and_chunk_never_panic(name in names(), bytes in inputs()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(extract::extract(
            &name,
            Bytes::from(bytes),
            &settings(),
            &CancellationToken::new(),
        ));
        match result {
            Ok(doc) => {
                let chunker = Chunker::new(24, 4).unwrap();
                for section in &doc.sections {
                    prop_assert!(section.text.len() <= 1 << 20);
                }
                for chunk in chunker.chunks(&doc) {
                    let chunk = chunk.unwrap();
                    let section = doc
                        .sections
                        .iter()
                        .find(|s| s.page == chunk.page)
                        .expect("chunk of a section");
                    let text: String = section
                        .text
                        .chars()
                        .skip(chunk.char_range.start)
                        .take(chunk.char_range.len())
                        .collect();
                    prop_assert_eq!(&text, &chunk.text);
                    prop_assert!(chunk.tokens as usize <= 24 || chunk.text.chars().count() == 1);
                }
            }
            Err(e) => {
                // Every error names the input it is about.
                prop_assert!(e.to_string().contains(&name), "{} lacks {:?}", e, name);
            }
        }
    }
}
