-- add_cost: count what an attempt on an agent spent (model tokens priced by the
-- gateway, or the agent's own figure) into the agent's record, for the agents screen.
-- A record that is gone (the agent was forgotten meanwhile) is not brought back.
--
-- KEYS[1] agent:<id>
--
-- ARGV[1] micro-USD to add
--
-- Returns 1 counted, 0 no such agent.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'cost_micro', ARGV[1])
return 1
