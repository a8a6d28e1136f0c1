import { MeshClient } from "../src/index.js";

const mesh = new MeshClient(process.env.MABEAM_MESHD!); // a meshd's host:port
console.log((await mesh.members()).length, "members");
console.log("leader", (await mesh.leader("mesh"))?.nodeId);
