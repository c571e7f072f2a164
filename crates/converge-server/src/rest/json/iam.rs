//! proto3 JSON of the IAM mixin (`google.iam.v1`): `Policy` with its bindings, conditions and
//! audit configs, and the bodies of GetIamPolicy, SetIamPolicy and TestIamPermissions.

use super::codec::{Bytes, Enum, I32, Msg, Opt, Repeated, Str};
use super::enums::ProtoEnum;
use super::object::proto_message;
use super::wkt::Mask;
use crate::grpc::iam::proto::{
    AuditConfig, AuditLogConfig, Binding, Expr, GetIamPolicyRequest, GetPolicyOptions, Policy,
    SetIamPolicyRequest, TestIamPermissionsRequest, TestIamPermissionsResponse,
    audit_log_config::LogType,
};

impl ProtoEnum for LogType {
    const FULL_NAME: &'static str = "google.iam.v1.AuditLogConfig.LogType";
    fn name_of(number: i32) -> Option<&'static str> {
        LogType::try_from(number)
            .ok()
            .map(|value| value.as_str_name())
    }
    fn number_of(name: &str) -> Option<i32> {
        LogType::from_str_name(name).map(|value| value as i32)
    }
}

proto_message! {
    Expr = "google.type.Expr" {
        expression: Str,
        title: Str,
        description: Str,
        location: Str,
    }
}

proto_message! {
    Binding = "google.iam.v1.Binding" {
        role: Str,
        members: Repeated<Str>,
        condition: Opt<Msg<Expr>>,
    }
}

proto_message! {
    AuditLogConfig = "google.iam.v1.AuditLogConfig" {
        log_type: Enum<LogType>,
        exempted_members: Repeated<Str>,
    }
}

proto_message! {
    AuditConfig = "google.iam.v1.AuditConfig" {
        service: Str,
        audit_log_configs: Repeated<Msg<AuditLogConfig>>,
    }
}

proto_message! {
    Policy = "google.iam.v1.Policy" {
        version: I32,
        bindings: Repeated<Msg<Binding>>,
        audit_configs: Repeated<Msg<AuditConfig>>,
        etag: Bytes,
    }
}

proto_message! {
    GetPolicyOptions = "google.iam.v1.GetPolicyOptions" {
        requested_policy_version: I32,
    }
}

proto_message! {
    GetIamPolicyRequest = "google.iam.v1.GetIamPolicyRequest" {
        resource: Str,
        options: Opt<Msg<GetPolicyOptions>>,
    }
}

proto_message! {
    SetIamPolicyRequest = "google.iam.v1.SetIamPolicyRequest" {
        resource: Str,
        policy: Opt<Msg<Policy>>,
        update_mask: Opt<Mask>,
    }
}

proto_message! {
    TestIamPermissionsRequest = "google.iam.v1.TestIamPermissionsRequest" {
        resource: Str,
        permissions: Repeated<Str>,
    }
}

proto_message! {
    TestIamPermissionsResponse = "google.iam.v1.TestIamPermissionsResponse" {
        permissions: Repeated<Str>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::json::ProtoJson;
    use serde_json::json;

    #[test]
    fn a_policy_round_trips_in_camel_case_with_a_base64_etag() {
        let policy = Policy {
            version: 3,
            bindings: vec![Binding {
                role: "roles/pubsub.subscriber".into(),
                members: vec!["user:ana@example.com".into()],
                condition: Some(Expr {
                    expression: "request.time < timestamp(\"2030-01-01T00:00:00Z\")".into(),
                    title: "until 2030".into(),
                    ..Default::default()
                }),
            }],
            audit_configs: vec![AuditConfig {
                service: "pubsub.googleapis.com".into(),
                audit_log_configs: vec![AuditLogConfig {
                    log_type: LogType::DataRead as i32,
                    exempted_members: vec![],
                }],
            }],
            etag: vec![0x00, 0x20, 0x01],
        };
        let json = policy.to_json();
        assert_eq!(json["etag"], "ACAB");
        assert_eq!(json["version"], 3);
        assert_eq!(json["bindings"][0]["condition"]["title"], "until 2030");
        assert_eq!(
            json["auditConfigs"][0]["auditLogConfigs"][0]["logType"],
            "DATA_READ"
        );
        assert_eq!(Policy::from_json(&json), Ok(policy));
    }

    #[test]
    fn request_bodies_read_either_spelling_and_reject_unknown_fields() {
        let request = SetIamPolicyRequest::from_json(&json!({
            "policy": {"bindings": [{"role": "roles/viewer", "members": ["allUsers"]}], "etag": "ACAB"},
            "update_mask": "bindings,etag"
        }))
        .expect("valid body");
        let policy = request.policy.expect("a policy");
        assert_eq!(policy.bindings[0].members, ["allUsers"]);
        assert_eq!(policy.etag, [0x00, 0x20, 0x01]);
        assert!(TestIamPermissionsRequest::from_json(&json!({"perms": []})).is_err());
        let get =
            GetIamPolicyRequest::from_json(&json!({"options": {"requestedPolicyVersion": 3}}))
                .expect("valid body");
        assert_eq!(get.options.map(|o| o.requested_policy_version), Some(3));
    }
}
