//! Quoting words for the test host's `sh`.
//!
//! Commands reach the test host as a script (`/testcmd`), so every word
//! that came from the user's argv has to survive a shell parse unchanged:
//! `cargo xtask run -- 'quiet loglevel=3'` must give lg one argument.

/// Quotes `word` for POSIX sh, leaving plainly safe words as they are.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Joins argv words into one command line for sh.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The script for a command given as argv words, the way `ssh` treats them:
/// one word is a shell command line (`'ls /dev; echo hi'`), several words
/// are one command with its arguments, each quoted.
pub fn command_line<S: AsRef<str>>(words: &[S]) -> String {
    match words {
        [one] => one.as_ref().to_string(),
        many => join(many),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(quote("console=ttyS0"), "console=ttyS0");
        assert_eq!(quote("/kit/bzImage"), "/kit/bzImage");
        assert_eq!(quote("two words"), "'two words'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn one_word_is_a_command_line_several_are_argv() {
        assert_eq!(command_line(&["ls /dev; echo hi"]), "ls /dev; echo hi");
        assert_eq!(
            command_line(&["lg", "run", "256", "a b"]),
            "lg run 256 'a b'"
        );
    }
}
