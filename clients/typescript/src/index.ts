export * as v1 from "./gen/mabeam/v1/mesh_pb.js";
