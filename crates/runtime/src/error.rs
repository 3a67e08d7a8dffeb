//! Errors as people read them.

/// `e` with every cause after it (`the database: database error: … FOREIGN KEY constraint
/// failed`): what dead jobs, failed runs and logs show. Displaying only the outermost error
/// left operators with "store".
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // an error that already prints its cause would repeat it
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
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
}
