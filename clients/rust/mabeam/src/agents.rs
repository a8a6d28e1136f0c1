//! AgentService: spawn, stop, inspect and message agentd's agents (messages and replies as JSON).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Code;

use crate::error::{Error, Result};
use crate::v1::agent_service_client::AgentServiceClient;
use crate::v1;
use crate::security::{Security, Transport};
use crate::{channel, request, retrying};

/// The optional fields of a spawn.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    pub name: String,
    pub supervisor: String,
    pub isolation: String,
    pub restart: String,
    pub child_id: String,
}

/// An AgentService client for one agentd.
#[derive(Clone)]
pub struct AgentClient {
    stub: AgentServiceClient<Transport>,
    /// Deadline of calls that do not take one.
    pub timeout: Duration,
    /// Tenant of every request; empty means the token's (another tenant's agents: admin tokens only).
    pub tenant: String,
}

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::msg(Code::InvalidArgument, format!("cannot encode as JSON: {e}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(if text.is_empty() { "null" } else { text })
        .map_err(|e| Error::msg(Code::Internal, format!("cannot decode the JSON reply: {e}")))
}

impl AgentClient {
    /// A client for the agentd at host:port (connects lazily).
    pub fn connect(target: &str) -> Result<AgentClient> {
        Ok(AgentClient { stub: AgentServiceClient::new(channel(target)?), timeout: Duration::from_secs(10), tenant: String::new() })
    }

    /// A client for the agentd at host:port with these credentials (token, TLS).
    pub fn connect_with(target: &str, security: &Security) -> Result<AgentClient> {
        Ok(AgentClient { stub: AgentServiceClient::new(security.channel(target, false)?), timeout: Duration::from_secs(10), tenant: String::new() })
    }

    pub fn stub(&self) -> AgentServiceClient<Transport> {
        self.stub.clone()
    }

    /// Start an agent of an allow-listed type with JSON-encodable args.
    pub async fn spawn<A: Serialize + ?Sized>(&self, agent_type: &str, args: &A, o: SpawnOptions) -> Result<v1::AgentInfo> {
        let req = v1::SpawnAgentRequest {
            r#type: agent_type.to_string(), args_json: to_json(args)?, name: o.name, supervisor: o.supervisor,
            isolation: o.isolation, restart: o.restart, child_id: o.child_id, tenant: self.tenant.clone(), ..Default::default()
        };
        Ok(self.stub.clone().spawn_agent(request(req, Some(self.timeout))).await?.into_inner().agent.unwrap_or_default())
    }

    pub async fn stop(&self, agent: &str) -> Result<()> {
        self.stub.clone().stop_agent(request(v1::StopAgentRequest { agent: agent.to_string(), tenant: self.tenant.clone(), ..Default::default() }, Some(self.timeout))).await?;
        Ok(())
    }

    pub async fn get(&self, agent: &str) -> Result<v1::AgentInfo> {
        let req = v1::GetAgentRequest { agent: agent.to_string(), tenant: self.tenant.clone(), ..Default::default() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.get_agent(request(req, Some(self.timeout))).await } })
            .await.map(|r| r.into_inner().agent.unwrap_or_default())
    }

    pub async fn list(&self, agent_type: &str) -> Result<Vec<v1::AgentInfo>> {
        let req = v1::ListAgentsRequest { r#type: agent_type.to_string(), tenant: self.tenant.clone(), ..Default::default() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.list_agents(request(req, Some(self.timeout))).await } })
            .await.map(|r| r.into_inner().agents)
    }

    pub async fn tree(&self, root: &str) -> Result<Vec<v1::TreeNode>> {
        let req = v1::SupervisionTreeRequest { root: root.to_string(), tenant: self.tenant.clone(), ..Default::default() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.supervision_tree(request(req, Some(self.timeout))).await } })
            .await.map(|r| r.into_inner().roots)
    }

    /// Put a message in an agent's mailbox (ResourceExhausted when it is full).
    pub async fn cast<M: Serialize + ?Sized>(&self, agent: &str, msg: &M) -> Result<()> {
        let req = v1::AgentCastRequest { agent: agent.to_string(), message_json: to_json(msg)?, tenant: self.tenant.clone(), ..Default::default() };
        self.stub.clone().cast(request(req, Some(self.timeout))).await?;
        Ok(())
    }

    /// Call an agent; `timeout` is the call's deadline.
    pub async fn call<M: Serialize + ?Sized, R: DeserializeOwned>(&self, agent: &str, msg: &M, timeout: Duration) -> Result<R> {
        let req = v1::AgentCallRequest { agent: agent.to_string(), message_json: to_json(msg)?, timeout_seconds: timeout.as_secs_f64(), tenant: self.tenant.clone(), ..Default::default() };
        let reply = self.stub.clone().call(request(req, Some(timeout + Duration::from_secs(1)))).await?.into_inner();
        from_json(&reply.reply_json)
    }

    /// Cast to a process group ("all" members or "one" in turn); the local deliveries.
    pub async fn cast_group<M: Serialize + ?Sized>(&self, group: &str, msg: &M, mode: &str) -> Result<i32> {
        let req = v1::AgentCastGroupRequest { group: group.to_string(), message_json: to_json(msg)?, mode: mode.to_string(), tenant: self.tenant.clone(), ..Default::default() };
        Ok(self.stub.clone().cast_group(request(req, Some(self.timeout))).await?.into_inner().local_deliveries)
    }

    pub async fn group_members(&self, group: &str) -> Result<Vec<String>> {
        let req = v1::AgentGroupMembersRequest { group: group.to_string(), tenant: self.tenant.clone(), ..Default::default() };
        retrying(|| { let mut s = self.stub.clone(); let req = req.clone(); async move { s.group_members(request(req, Some(self.timeout))).await } })
            .await.map(|r| r.into_inner().agent_ids)
    }
}
