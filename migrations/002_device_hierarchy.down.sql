DROP TABLE device_groups;
DROP TABLE sites;
DROP TABLE organizations;
