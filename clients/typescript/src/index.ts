/**
 * The TypeScript SDK for mabeam (ESM, typed, promises and async iterators over gRPC):
 * MeshClient, AgentClient, CoordinatorClient (with a leader-following BidStream) and
 * ExternalAgent. Failures reject with MabeamError (code, reason, metadata, fieldViolations,
 * retryAfter). The generated messages and service descriptors are exported as `v1`.
 */
export { MabeamError, translate, codeName, CODE_NAMES, type CodeName } from "./errors.js";
export { MeshClient, type Destination } from "./mesh.js";
export { AgentClient, type SpawnOptions } from "./agents.js";
export { CoordinatorClient, BidStream, parseJson, type CreateOptions } from "./coordinator.js";
export { ExternalAgent, type AgentOptions, type Context } from "./agent.js";
export { RunClient } from "./runs.js";
export { defaultSecurity, securityFromEnv, setDefaultSecurity, type Security } from "./security.js";
export type { CallOptions } from "./transport.js";
export * as v1common from "./gen/mabeam/v1/common_pb.js";
export * as v1mesh from "./gen/mabeam/v1/mesh_pb.js";
export * as v1agent from "./gen/mabeam/v1/agent_pb.js";
export * as v1coordinator from "./gen/mabeam/v1/coordinator_pb.js";
export * as v1dataplane from "./gen/mabeam/v1/dataplane_pb.js";
export * as v1run from "./gen/mabeam/v1/run_pb.js";
