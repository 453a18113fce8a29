-- Issues join tokens for new members, lists them, then revokes them again.
-- Run: starling --dir DIR run scripts/tokens.lua
local names = { "edge-1", "edge-2" }
for _, name in ipairs(names) do
  local issued = cluster.add(name)
  print("token for " .. issued.server_name .. " expires at " .. issued.expires_at)
end
local listed = #cluster.tokens()
for _, name in ipairs(names) do cluster.revoke_token(name) end
return { issued = #names, listed = listed, left = #cluster.tokens() }
