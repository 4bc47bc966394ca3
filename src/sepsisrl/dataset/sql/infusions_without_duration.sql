-- inputevents rows (view inputs) the infusions SQL leaves out for having no duration.
SELECT count(*) FROM inputs
               WHERE starttime IS NULL OR endtime IS NULL OR endtime <= starttime
