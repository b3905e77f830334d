//! The naming rule of everything a service spec names: services, ports, pools and
//! dependencies. One rule, a DNS label, so names can become host names later without renaming;
//! it sits at the bottom because specs, port pools and query messages all check it.
//!
//! Owns [`check_name`] and [`MAX_NAME_LEN`]. Node names follow another, looser rule
//! ([`super::auth::MAX_NAME_LEN`], checked where a node is named).

/// Longest service, port, pool or dependency name: a DNS label, so names can become host
/// names (`NAME.mesh`) later without renaming.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a service, port, pool or dependency name: 1-63 characters of `[a-z0-9-]`, not
/// starting or ending with `-` (a DNS label). Returns why not.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("must be at most 63 characters");
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    {
        return Err("only lowercase letters a-z, digits 0-9 and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(check_name("db").is_ok());
        assert!(check_name("web-2").is_ok());
        assert!(check_name(&"a".repeat(63)).is_ok());
        for bad in [
            "",
            "Web",
            "web_2",
            "-web",
            "web-",
            "wéb",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
