-- Applies a set of global settings, stopping at the first one the cluster refuses.
-- Run: starling --dir DIR run scripts/tune.lua
local wanted = {
  ["cluster.offline_threshold"] = 30,
  ["cluster.join_token_expiry"] = "1H",
  ["user.owner"] = "ops",
}
local applied = {}
for key, value in pairs(wanted) do
  local ok, err = pcall(config.set, key, value)
  if not ok then error("could not set " .. key .. ": " .. tostring(err)) end
  applied[key] = config.get(key)
end
return applied
