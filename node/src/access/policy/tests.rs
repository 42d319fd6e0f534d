//! Unit tests of `policy`.

use super::*;

#[test]
fn every_role_has_exactly_one_row() {
    for role in Role::ALL {
        assert_eq!(
            ROLE_TABLE.iter().filter(|p| p.role == role).count(),
            1,
            "{role}"
        );
    }
}

#[test]
fn no_field_is_listed_twice_for_a_role() {
    for row in ROLE_TABLE {
        for field in Field::ALL {
            let n = row.fields.iter().filter(|(f, _)| *f == field).count();
            assert!(n <= 1, "{} lists {} {n} times", row.role, field.path());
        }
    }
}

#[test]
fn roles_round_trip_through_their_names() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
    }
    assert!("root".parse::<Role>().is_err());
}

#[test]
fn only_maskable_fields_are_masked_and_only_names_reduced() {
    for row in ROLE_TABLE {
        for (field, vis) in row.fields {
            match vis {
                Visibility::Masked => assert!(
                    matches!(field, Field::Name | Field::Phone | Field::Email),
                    "{} masks {}, which has no masking rule",
                    row.role,
                    field.path()
                ),
                Visibility::FirstName => assert_eq!(*field, Field::Name, "{}", row.role),
                _ => {}
            }
        }
    }
}

#[test]
fn grants_are_consistent() {
    for row in ROLE_TABLE {
        assert_eq!(
            row.reveal.is_empty(),
            !row.methods.contains(&Method::RevealField),
            "{}: reveal list and RevealField go together",
            row.role
        );
        assert_eq!(
            row.statuses.is_empty(),
            !row.methods.contains(&Method::UpdateOrderStatus),
            "{}: statuses and UpdateOrderStatus go together",
            row.role
        );
        for f in row.reveal {
            assert!(f.is_buyer_field(), "{} reveals {}", row.role, f.path());
        }
    }
    for m in Method::ALL {
        assert_eq!(Method::from_path(m.path()), Some(m));
    }
    for f in Field::ALL {
        assert_eq!(Field::from_path(f.path()), Some(f));
    }
}

#[test]
fn ims_sees_no_buyer_field() {
    assert!(sees_no_buyer_field(Role::Ims));
    assert!(!sees_no_buyer_field(Role::Storefront));
    for field in Field::ALL.into_iter().filter(|f| f.is_buyer_field()) {
        assert_eq!(
            visibility(Role::Ims, field),
            Visibility::Withheld,
            "{}",
            field.path()
        );
    }
}
