-- Argo CD health of a SlimServe ModelService (slimserve.io/v1alpha1).
--   Healthy:     the Ready condition is True for the current generation.
--   Degraded:    Ready is False for a reason that waiting will not fix (listed below): the spec is
--                invalid, the CompressionJob it serves failed, or the rollout exceeded its deadline.
--   Progressing: no status yet, a status of an older generation, or Ready False/Unknown while the model
--                is compressed or the Deployment rolls out.
local DEGRADED_REASONS = {
  InvalidSpec = true,
  UnknownNodePool = true,
  CompressionFailed = true,
  ProgressDeadlineExceeded = true,
}
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then return fallback end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then text = text .. ": " end
    text = text .. c.message
  end
  if text == "" then return fallback end
  return text
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the ModelService"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet acted on generation " .. generation
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready ~= nil and ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
  ready = nil
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  local message = describe(ready, "Ready")
  if status.url ~= nil then message = message .. "; " .. status.url end
  hs.message = message
  return hs
end
if ready.status == "False" and DEGRADED_REASONS[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = describe(ready, "Not ready")
return hs
