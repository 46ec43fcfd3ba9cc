// Package authz is Vouch's authorization policy: given what an agent is
// (its appraisal), the delegation it acts under (who let it do what, on
// which resources, until when, from where) and the environment, it decides
// whether one action on one resource is allowed now, and which scope a new
// credential may carry.
//
// A policy directory holds three kinds of data (the built-in one is
// embedded from default/):
//
//	schema.cedarschema  Cedar schema: the Agent principal, resource types,
//	                    actions ("service:verb") and the decision context
//	intents.yaml        intent catalogue: intent → actions it may need
//	                    (standing) and actions only granted just in time
//	policies/*.cedar    Cedar policies, each with a unique @id("…")
//
// Every policy is validated against the schema when loaded (cedar-go's
// experimental validator); a directory with one bad policy is refused as a
// whole, and [Holder.Reload] then keeps the set in force. Decisions are
// deny by default: they pass the delegation's status, agent selector,
// intent, resources, networks and time window first, then need a Cedar
// permit and no forbid. A Cedar evaluation error denies.
package authz
