-- Argo CD health of a SlimServe BatchInference (slimserve.io/v1alpha1).
--   Healthy:     the Succeeded condition is True for the current generation (every shard scored, the
--                output manifest written).
--   Degraded:    Succeeded is False or Stalled is True: more shards failed than spec.maxFailedShards allows,
--                the Job ran past its deadline or was deleted, no manifest was written, the spec is Invalid,
--                or the run is held up until someone acts (its CompressionJob failed or does not exist, a
--                child's name is held by another object).
--   Progressing: no status yet, a status of an older generation, Pending (waiting for its Job, or for its
--                CompressionJob's artifact) or Running (message: shards and records).
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local function current(c, generation)
  -- a verdict about an older spec says nothing about this one
  if c ~= nil and c.observedGeneration ~= nil and generation ~= nil and c.observedGeneration < generation then
    return nil
  end
  return c
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
  hs.message = "Waiting for the operator to pick up the BatchInference"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet acted on generation " .. generation
  return hs
end

local succeeded = current(condition(status.conditions, "Succeeded"), generation)
local stalled = current(condition(status.conditions, "Stalled"), generation)

if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(succeeded, "Completed")
  return hs
end
if (succeeded ~= nil and succeeded.status == "False") or (stalled ~= nil and stalled.status == "True")
    or status.phase == "Failed" or status.phase == "Invalid" then
  hs.status = "Degraded"
  if succeeded ~= nil and succeeded.status == "False" then
    hs.message = describe(succeeded, "BatchInference failed")
  else
    hs.message = describe(stalled, "BatchInference " .. (status.phase or "failed"))
  end
  return hs
end

hs.status = "Progressing"
hs.message = describe(succeeded, status.phase or "Pending")
if status.progress ~= nil and status.progress ~= "" then
  hs.message = hs.message .. " (" .. status.progress .. " records)"
end
return hs
