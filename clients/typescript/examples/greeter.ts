// An external agent in TypeScript: "greeter-ts" answers calls; a Python agent (agentd's relay) calls it by name.
import { AgentClient, ExternalAgent } from "../src/index.js";

const greeter = new ExternalAgent(process.env.MABEAM_MESHD!, {
  names: ["greeter-ts"],
  onCall: (name) => `hello, ${name}`,
});
await greeter.start();
const agents = new AgentClient(process.env.MABEAM_AGENTD!);
const relay = `relay-${process.pid}`;
await agents.spawn("relay", {}, { name: relay });
console.log(await agents.call(relay, { to: "greeter-ts", msg: "world" })); // hello, world
await greeter.stop();
