//! Masking rules: what a role that may see a field only "masked" gets instead of the value.
//!
//! Masks keep just enough to be useful to the role's job and never enough to contact or find the
//! buyer: a phone keeps its country code and last four digits, an email its first letter and domain,
//! a name the first letter of each word.

/// `+919876543210` -> `+91******3210`.
pub fn phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 6 {
        return "*".repeat(digits.len().max(1));
    }
    let (cc, rest) = if phone.starts_with("+91") {
        ("+91", &digits[2..])
    } else {
        ("+", &digits[..])
    };
    let keep = 4.min(rest.len());
    let tail: String = rest[rest.len() - keep..].iter().collect();
    format!("{cc}{}{tail}", "*".repeat(rest.len() - keep))
}

/// `ravi.kumar@example.com` -> `r***@example.com`.
pub fn email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// `Ravi Kumar` -> `R*** K***`.
pub fn name(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|w| w.chars().next())
        .map(|c| format!("{c}***"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Ravi Kumar` -> `Ravi`: enough to greet the buyer in a message, not to identify them.
pub(crate) fn first_name(name: &str) -> String {
    name.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_like_the_design_examples() {
        assert_eq!(phone("+919876543210"), "+91******3210");
        assert_eq!(email("ravi@example.com"), "r***@example.com");
        assert_eq!(name("Ravi Kumar"), "R*** K***");
        assert_eq!(name("  "), "");
        assert_eq!(first_name("Ravi Kumar"), "Ravi");
        assert_eq!(first_name(""), "");
    }

    proptest! {
        #[test]
        fn masked_phone_never_shows_the_middle(n in "[6-9][0-9]{9}") {
            let p = format!("+91{n}");
            let m = phone(&p);
            prop_assert_eq!(m.len(), p.len());
            prop_assert!(!m.contains(&n[..6]));
            prop_assert!(m.ends_with(&n[6..]));
        }

        #[test]
        fn masked_email_keeps_only_first_letter(local in "[a-z]{2,20}", domain in "[a-z]{2,10}\\.in") {
            let m = email(&format!("{local}@{domain}"));
            prop_assert_eq!(m, format!("{}***@{domain}", &local[..1]));
        }
    }
}
