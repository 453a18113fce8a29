-- Prints one line per member and returns a summary table.
-- Run: starling --dir DIR run scripts/members.lua
local summary = { voters = 0, standbys = 0, spares = 0, offline = {} }
for _, member in ipairs(cluster.members()) do
  local roles = table.concat(member.roles, ",")
  print(string.format("%-12s %-8s %-30s %s", member.server_name, member.status, roles, member.url))
  local is_voter, is_standby = false, false
  for _, role in ipairs(member.roles) do
    if role == "database" then is_voter = true end
    if role == "database-standby" then is_standby = true end
  end
  if is_voter then
    summary.voters = summary.voters + 1
  elseif is_standby then
    summary.standbys = summary.standbys + 1
  else
    summary.spares = summary.spares + 1
  end
  if member.status ~= "Online" then table.insert(summary.offline, member.server_name) end
end
summary.leader = cluster.info().leader
return summary
