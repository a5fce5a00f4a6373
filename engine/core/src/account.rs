//! [`Role`]: the product's four roles and what each may do.
//!
//! Owns: the role ladder (owner > admin > manager > user) and the permission
//! questions the engine asks of it, so the server and every client answer them
//! the same way. Does not own: accounts, passwords or sessions (the server's
//! store), or which customers a user is assigned (the documents).

use serde::{Deserialize, Serialize};

/// A member's role in a tenant, highest first.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// ユーザー: calls the customers they may see.
    User,
    /// マネージャー: reads call history and team figures, plays and deletes recordings.
    Manager,
    /// アドミン: manages users, the calling contract and plugins.
    Admin,
    /// オーナー: the tenant's owner; everything an admin may do, and naming admins.
    Owner,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::User, Role::Manager, Role::Admin, Role::Owner];

    /// The lowercase name used on the command line and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Manager => "manager",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// The name shown in the Japanese UI.
    pub fn label_ja(self) -> &'static str {
        match self {
            Self::User => "ユーザー",
            Self::Manager => "マネージャー",
            Self::Admin => "アドミン",
            Self::Owner => "オーナー",
        }
    }

    /// Reads a role from its name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// "Admin or above": may add users, reset passwords, grant or revoke the
    /// calling contract and install plugins.
    pub fn is_admin(self) -> bool {
        self >= Self::Admin
    }

    /// "Manager or above": may delete recordings and read everyone's calls.
    pub fn is_manager(self) -> bool {
        self >= Self::Manager
    }

    /// Whether a member with this role may give `other` to someone: admins may
    /// hand out roles up to admin, only an owner may make another owner.
    pub fn may_grant(self, other: Role) -> bool {
        self.is_admin() && (other < Self::Owner || self == Self::Owner)
    }

    /// Whether the assignee visibility restriction (担当者閲覧制限), when a tenant
    /// turns it on, limits this role to the customers assigned to it.
    pub fn is_limited_by_assignee_visibility(self) -> bool {
        self == Self::User
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_from_user_up_to_owner() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Manager);
        assert!(Role::Manager > Role::User);
        assert!(Role::Admin.is_admin() && !Role::Manager.is_admin());
        assert!(Role::Manager.is_manager() && !Role::User.is_manager());
    }

    #[test]
    fn only_an_owner_may_make_another_owner() {
        assert!(Role::Owner.may_grant(Role::Owner));
        assert!(!Role::Admin.may_grant(Role::Owner));
        assert!(Role::Admin.may_grant(Role::Admin));
        assert!(!Role::Manager.may_grant(Role::User));
    }

    #[test]
    fn role_names_read_back() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
