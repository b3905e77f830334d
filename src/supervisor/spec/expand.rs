//! `$PORT`, `${PORT}` and `$PORT_<NAME>` in arguments: which variables an argument names and
//! their replacement at start time ([`expand_args`]); `$$` is a literal `$`.

use std::collections::BTreeMap;

/// Whether a variable name is one [`expand_args`] replaces.
fn is_port_variable(name: &str) -> bool {
    name == "PORT" || name.starts_with("PORT_")
}

/// One `$` reference found in a text.
enum Token<'a> {
    Literal(&'a str),
    Dollar,
    Variable { name: &'a str, raw: &'a str },
}

/// Splits a text into literals, `$$` and `$NAME` / `${NAME}` references (shell-style names:
/// a letter or `_`, then letters, digits, `_`; the longest run is the name).
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut literal_start = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'$' {
            index += 1;
            continue;
        }
        let (token, end) = match bytes.get(index + 1) {
            Some(b'$') => (Some(Token::Dollar), index + 2),
            Some(b'{') => match text[index + 2..].find('}') {
                Some(close) => {
                    let end = index + 2 + close + 1;
                    (
                        Some(Token::Variable {
                            name: &text[index + 2..end - 1],
                            raw: &text[index..end],
                        }),
                        end,
                    )
                }
                None => (None, index + 1),
            },
            Some(byte) if byte.is_ascii_alphabetic() || *byte == b'_' => {
                let length = bytes[index + 1..]
                    .iter()
                    .take_while(|byte| byte.is_ascii_alphanumeric() || **byte == b'_')
                    .count();
                let end = index + 1 + length;
                (
                    Some(Token::Variable {
                        name: &text[index + 1..end],
                        raw: &text[index..end],
                    }),
                    end,
                )
            }
            _ => (None, index + 1),
        };
        if let Some(token) = token {
            if literal_start < index {
                tokens.push(Token::Literal(&text[literal_start..index]));
            }
            tokens.push(token);
            literal_start = end;
        }
        index = end;
    }
    if literal_start < text.len() {
        tokens.push(Token::Literal(&text[literal_start..]));
    }
    tokens
}

/// The `PORT`/`PORT_*` variables a text refers to.
pub(super) fn referenced_port_variables(text: &str) -> Vec<String> {
    tokenize(text)
        .into_iter()
        .filter_map(|token| match token {
            Token::Variable { name, .. } if is_port_variable(name) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// Replaces `$PORT`, `${PORT}`, `$PORT_<NAME>`, `${PORT_<NAME>}` in one text with the values
/// in `ports` (keyed by variable name, as [`ServiceSpec::port_env`](crate::supervisor::spec::ServiceSpec::port_env) builds it) and `$$` with
/// `$`. Every other `$` reference (`$HOME`, an unknown `$PORT_X`) is left as written: there is
/// no shell, and validation refuses unknown port variables before this runs.
pub fn expand_port_variables(text: &str, ports: &BTreeMap<String, u16>) -> String {
    let mut out = String::with_capacity(text.len());
    for token in tokenize(text) {
        match token {
            Token::Literal(literal) => out.push_str(literal),
            Token::Dollar => out.push('$'),
            Token::Variable { name, raw } => match ports.get(name) {
                Some(port) if is_port_variable(name) => out.push_str(&port.to_string()),
                _ => out.push_str(raw),
            },
        }
    }
    out
}

/// [`expand_port_variables`] over every argument.
pub fn expand_args(args: &[String], ports: &BTreeMap<String, u16>) -> Vec<String> {
    args.iter()
        .map(|arg| expand_port_variables(arg, ports))
        .collect()
}
