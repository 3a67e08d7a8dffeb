//! Errors as people read them.

/// `e` with every cause after it (`the database: database error: … FOREIGN KEY constraint
/// failed`): what dead jobs, failed runs and logs show. Displaying only the outermost error
/// left operators with "store".
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = without_server_line(&e.to_string()).to_owned();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = without_server_line(&c.to_string()).to_owned();
        // an error that already prints its cause would repeat it
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `text` without the ` at line 948` sqlx puts after a PostgreSQL error: a line of the
/// server's own C source, which reads as if something in the user's input were at fault.
fn without_server_line(text: &str) -> &str {
    match text.rsplit_once(" at line ") {
        Some((before, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => {
            before
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    /// Dead jobs and failed runs said only "store": the cause is what an operator needs.
    #[test]
    fn a_failure_is_described_with_every_cause() {
        let root = Layer("FOREIGN KEY constraint failed", None);
        let db = Layer("database error", Some(Box::new(root)));
        let e = Layer("the database", Some(Box::new(db)));
        assert_eq!(
            with_causes(&e),
            "the database: database error: FOREIGN KEY constraint failed"
        );
        // a message that already ends with its cause does not repeat it
        let inner = Layer("timed out", None);
        let outer = Layer("redis: timed out", Some(Box::new(inner)));
        assert_eq!(with_causes(&outer), "redis: timed out");
    }

    #[test]
    fn postgresqls_source_lines_are_left_out() {
        let root = Layer("database \"x\" does not exist at line 948", None);
        let e = Layer("cannot connect", Some(Box::new(root)));
        assert_eq!(
            with_causes(&e),
            "cannot connect: database \"x\" does not exist"
        );
        // a JSON position is the user's, and stays
        let json = Layer("expected value at line 1 column 2", None);
        assert_eq!(with_causes(&json), "expected value at line 1 column 2");
    }
}
