//! MeshService: membership, leaders, the name/group registry and the data plane's gRPC face.

use std::collections::HashMap;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::v1::mesh_service_client::MeshServiceClient;
use crate::v1::{self, AgentRef};
use crate::security::{Security, Transport};
use crate::{channel, request, retrying};

/// Where a data-plane message goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A registered name.
    Name(String),
    /// An endpoint (tenant, node, agent id).
    Agent(AgentRef),
    /// A group: every member, or (`one`) one member in round-robin turn.
    Group { group: String, one: bool },
}

impl From<&str> for Destination {
    fn from(name: &str) -> Destination {
        Destination::Name(name.to_string())
    }
}

macro_rules! to_oneof {
    ($module:ident, $to:expr) => {
        match $to {
            Destination::Name(n) => v1::$module::To::ToName(n),
            Destination::Agent(a) => v1::$module::To::ToAgent(a),
            Destination::Group { group, one } => v1::$module::To::ToGroup(v1::GroupAddress {
                group,
                mode: if one { v1::GroupMode::One as i32 } else { v1::GroupMode::All as i32 },
            }),
        }
    };
}

/// A MeshService client for one meshd.
#[derive(Clone)]
pub struct MeshClient {
    stub: MeshServiceClient<Transport>,
    /// Tenant of every request; empty means the token's ("default" without security; another: admin tokens only).
    pub tenant: String,
    /// Deadline of unary calls.
    pub timeout: Duration,
}

impl MeshClient {
    /// A client for the meshd at host:port (connects lazily).
    pub fn connect(target: &str) -> Result<MeshClient> {
        Ok(MeshClient { stub: MeshServiceClient::new(channel(target)?), tenant: String::new(), timeout: Duration::from_secs(10) })
    }

    /// A client for the meshd at host:port with these credentials (token, TLS).
    pub fn connect_with(target: &str, security: &Security) -> Result<MeshClient> {
        Ok(MeshClient { stub: MeshServiceClient::new(security.channel(target, false)?), tenant: String::new(),
            timeout: Duration::from_secs(10) })
    }

    /// The generated client, for anything the SDK does not wrap.
    pub fn stub(&self) -> MeshServiceClient<Transport> {
        self.stub.clone()
    }

    fn t(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    pub async fn ping(&self) -> Result<v1::PingResponse> {
        retrying(|| { let mut s = self.stub.clone(); async move { s.ping(request(v1::PingRequest {}, self.t())).await } }).await.map(|r| r.into_inner())
    }

    /// The live members as this node sees them.
    pub async fn members(&self) -> Result<Vec<v1::NodeInfo>> {
        retrying(|| { let mut s = self.stub.clone(); async move { s.list_members(request(v1::ListMembersRequest {}, self.t())).await } })
            .await.map(|r| r.into_inner().members)
    }

    /// A snapshot of the members, then every join, update and leave.
    pub async fn watch_members(&self) -> Result<impl Stream<Item = Result<v1::MemberEvent>>> {
        let stream = self.stub.clone().watch_members(v1::WatchMembersRequest {}).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from)))
    }

    /// The leader of a role ("" means "mesh").
    pub async fn leader(&self, role: &str) -> Result<Option<v1::LeaderInfo>> {
        retrying(|| { let mut s = self.stub.clone(); let role = role.to_string(); async move { s.get_leader(request(v1::GetLeaderRequest { role }, self.t())).await } })
            .await.map(|r| r.into_inner().leader)
    }

    /// The leader of a role, then every change.
    pub async fn watch_leader(&self, role: &str) -> Result<impl Stream<Item = Result<v1::LeaderEvent>>> {
        let stream = self.stub.clone().watch_leader(v1::WatchLeaderRequest { role: role.to_string() }).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from)))
    }

    /// Register a cluster-unique name for an agent on this node (AlreadyExists, reason NAME_TAKEN, when taken).
    pub async fn register_name(&self, name: &str, agent_id: &str, metadata: HashMap<String, String>) -> Result<v1::NameEntry> {
        let req = v1::RegisterNameRequest {
            tenant: self.tenant.clone(), name: name.to_string(),
            target: Some(AgentRef { agent_id: agent_id.to_string(), ..AgentRef::default() }), metadata,
        };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.register_name(request(req, self.t())).await } })
            .await.map(|r| r.into_inner().entry.unwrap_or_default())
    }

    pub async fn unregister_name(&self, name: &str) -> Result<()> {
        let req = v1::UnregisterNameRequest { tenant: self.tenant.clone(), name: name.to_string() };
        self.stub.clone().unregister_name(request(req, self.t())).await?;
        Ok(())
    }

    /// Resolve a name from the node's cache (NotFound when absent).
    pub async fn lookup(&self, name: &str) -> Result<v1::NameEntry> {
        let req = v1::LookupRequest { tenant: self.tenant.clone(), name: name.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.lookup(request(req, self.t())).await } })
            .await.map(|r| r.into_inner().entry.unwrap_or_default())
    }

    /// Set a tenant's whole quota, kept in etcd and enforced by every node (admin only; a limit left 0 is
    /// unlimited; creates the tenant). Idempotent, so retried on UNAVAILABLE. Over a limit, calls fail
    /// `ResourceExhausted` with reason `QUOTA_EXCEEDED`.
    pub async fn set_tenant_quota(&self, quota: v1::TenantQuota) -> Result<v1::TenantQuota> {
        let req = v1::SetTenantQuotaRequest { quota: Some(quota) };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.set_tenant_quota(request(req, self.t())).await } })
            .await.map(|r| r.into_inner())
    }

    /// A tenant's quota and what it uses now (empty: the caller's tenant; only an admin may name another).
    pub async fn tenant_usage(&self, tenant: &str) -> Result<v1::TenantUsage> {
        let req = v1::GetTenantUsageRequest { tenant: tenant.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.get_tenant_usage(request(req, self.t())).await } })
            .await.map(|r| r.into_inner())
    }

    pub async fn names(&self, prefix: &str) -> Result<Vec<v1::NameEntry>> {
        let req = v1::ListNamesRequest { tenant: self.tenant.clone(), prefix: prefix.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.list_names(request(req, self.t())).await } })
            .await.map(|r| r.into_inner().entries)
    }

    pub async fn join_group(&self, group: &str, agent_id: &str) -> Result<()> {
        let req = v1::JoinGroupRequest { tenant: self.tenant.clone(), group: group.to_string(),
            member: Some(AgentRef { agent_id: agent_id.to_string(), ..AgentRef::default() }), metadata: HashMap::new() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.join_group(request(req, self.t())).await } }).await?;
        Ok(())
    }

    pub async fn leave_group(&self, group: &str, agent_id: &str) -> Result<bool> {
        let req = v1::LeaveGroupRequest { tenant: self.tenant.clone(), group: group.to_string(),
            member: Some(AgentRef { agent_id: agent_id.to_string(), ..AgentRef::default() }) };
        Ok(self.stub.clone().leave_group(request(req, self.t())).await?.into_inner().removed)
    }

    /// A group's members cluster-wide, ordered by (node, agent).
    pub async fn group_members(&self, group: &str) -> Result<Vec<v1::GroupMember>> {
        let req = v1::GroupMembersRequest { tenant: self.tenant.clone(), group: group.to_string() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.group_members(request(req, self.t())).await } })
            .await.map(|r| r.into_inner().members)
    }

    pub async fn groups(&self) -> Result<Vec<v1::GroupSummary>> {
        let req = v1::ListGroupsRequest { tenant: self.tenant.clone() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.list_groups(request(req, self.t())).await } })
            .await.map(|r| r.into_inner().groups)
    }

    /// A one-way data-plane message; the ids of the messages sent.
    pub async fn send(&self, to: Destination, payload: Vec<u8>) -> Result<Vec<u64>> {
        let req = v1::SendRequest { tenant: self.tenant.clone(), to: Some(to_oneof!(send_request, to)), payload, ..Default::default() };
        Ok(self.stub.clone().send(request(req, self.t())).await?.into_inner().message_ids)
    }

    /// A data-plane call with `timeout` as its deadline.
    pub async fn call(&self, to: Destination, payload: Vec<u8>, timeout: Duration) -> Result<v1::CallResponse> {
        let req = v1::CallRequest {
            tenant: self.tenant.clone(), to: Some(to_oneof!(call_request, to)), payload,
            timeout_ms: timeout.as_millis().max(1) as u32, ..Default::default()
        };
        Ok(self.stub.clone().call(request(req, Some(timeout + Duration::from_millis(500)))).await?.into_inner())
    }

    /// Open an endpoint with names and groups; the first item carries its address, then what it receives.
    pub async fn subscribe(&self, names: Vec<String>, groups: Vec<String>, max_pending: u32)
        -> Result<impl Stream<Item = Result<v1::SubscribeResponse>>> {
        let req = v1::SubscribeRequest { tenant: self.tenant.clone(), agent_id: String::new(), names, groups, max_pending };
        let stream = self.stub.clone().subscribe(req).await?.into_inner();
        Ok(stream.map(|item| item.map_err(Error::from)))
    }
}
